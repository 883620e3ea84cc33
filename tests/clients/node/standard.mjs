// Standard clients against a running halflife, used unmodified, as a
// reader of docs/protocol.md would: openid-client for discovery, token exchange with a
// DPoP key, introspection with client_secret_basic and revocation; jose to
// verify issued tokens against the JWKS. Prints one JSON object; exits
// non-zero on any failure. Driven by tests/api/clients.rs.
import * as client from 'openid-client'
import * as jose from 'jose'

const [command, issuer, ...args] = process.argv.slice(2)
// The tests run the broker on plain http on loopback.
const options = { algorithm: 'oauth2', execute: [client.allowInsecureRequests] }

async function introspect(clientId, secret, token) {
  const config = await client.discovery(new URL(issuer), clientId, secret, client.ClientSecretBasic(secret), options)
  return client.tokenIntrospection(config, token)
}

async function revoke(clientId, secret, token) {
  const config = await client.discovery(new URL(issuer), clientId, secret, client.ClientSecretBasic(secret), options)
  await client.tokenRevocation(config, token)
  return { revoked: true }
}

async function dpopExchange(subjectToken, audience) {
  // A workload is a public client here: its attestation authenticates it.
  const config = await client.discovery(new URL(issuer), 'workload', undefined, client.None(), options)
  const keyPair = await client.randomDPoPKeyPair('EdDSA')
  const dpop = client.getDPoPHandle(config, keyPair)
  const tokens = await client.genericGrantRequest(
    config,
    'urn:ietf:params:oauth:grant-type:token-exchange',
    { subject_token: subjectToken, subject_token_type: 'urn:ietf:params:oauth:token-type:jwt', audience },
    { DPoP: dpop },
  )
  const jwk = await jose.exportJWK(keyPair.publicKey)
  const thumbprint = await jose.calculateJwkThumbprint(jwk)
  const verified = await verify(tokens.access_token, audience)
  return { token_type: tokens.token_type, access_token: tokens.access_token, thumbprint, claims: verified }
}

async function verify(token, audience) {
  const metadata = await (await fetch(new URL('/.well-known/oauth-authorization-server', issuer))).json()
  const jwks = jose.createRemoteJWKSet(new URL(metadata.jwks_uri))
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer, audience, typ: 'at+jwt' })
  return { ...payload, alg: protectedHeader.alg }
}

const commands = {
  introspect: () => introspect(args[0], args[1], args[2]),
  revoke: () => revoke(args[0], args[1], args[2]),
  'dpop-exchange': () => dpopExchange(args[0], args[1]),
  verify: () => verify(args[0], args[1]),
}

try {
  if (!commands[command]) throw new Error(`unknown command ${command}`)
  console.log(JSON.stringify(await commands[command]()))
} catch (e) {
  console.error(`${e.name}: ${e.message}${e.cause ? ' ' + JSON.stringify(e.cause) : ''}`)
  process.exit(1)
}

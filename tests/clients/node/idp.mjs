// A real OpenID provider (panva's oidc-provider, unmodified) for the tests
// where people sign in: tests/api/idp.rs starts it, reads the one JSON line
// it prints, and completes the person's side of a sign-in over HTTP through
// the provider's own development login and consent pages.
//
//   node idp.mjs CONFIG.json
//
// CONFIG: {"users": {"alice": {"email": "alice@example.com", "name": "Alice",
//           "groups": ["hl-operators"]}},
//          "device_flow": true,          // advertise the device grant (RFC 8628)
//          "device_interval": 1,         // seconds a device client waits between polls
//          "device_code_ttl": 600,       // seconds a device code lives (the provider's default when absent)
//          "console": {"client_secret": "...", "redirect_uris": ["http://127.0.0.1:1/callback"]},
//          "clients": [ ...extra client metadata... ]}
//
// Listens on 127.0.0.1 at a random port, prints {"issuer":"http://127.0.0.1:PORT"}
// once it accepts connections, and runs until killed or its stdin closes.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

// stdout carries the one announcement line; the provider's own notices
// (console.log/info: "customize this page", ...) go to stderr with its warnings.
console.log = console.error;
console.info = console.error;

const config = process.argv[2] ? JSON.parse(readFileSync(process.argv[2], 'utf8')) : {};
const users = config.users ?? {};
const deviceFlow = config.device_flow ?? true;

// A fresh RS256 signing key per run; the provider publishes it at jwks_uri.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

const clients = [
  {
    // The CLI: a public native client (RFC 8252). A loopback redirect
    // registered without a port matches any port (RFC 8252 §7.3).
    client_id: 'halflife-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    // (The provider refuses a client whose grant it has disabled.)
    grant_types: deviceFlow
      ? ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code']
      : ['authorization_code'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
  {
    // The web console: a confidential client.
    client_id: 'halflife-console',
    client_secret: config.console?.client_secret ?? randomBytes(24).toString('base64url'),
    application_type: 'web',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: config.console?.redirect_uris ?? ['http://127.0.0.1/console/callback'],
  },
  ...(config.clients ?? []),
];

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // The claims the scopes ask for go into the ID token itself, which is
    // what halflife verifies; the default keeps them for userinfo only when
    // an access token is issued too.
    conformIdTokenClaims: false,
    ...(config.device_code_ttl ? { ttl: { DeviceCode: config.device_code_ttl } } : {}),
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: deviceFlow },
      revocation: { enabled: true },
    },
    async findAccount(_ctx, id) {
      const user = users[id];
      if (!user) {
        return undefined;
      }
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email,
            email_verified: user.email_verified ?? true,
            name: user.name ?? id,
            groups: user.groups ?? [],
          };
        },
      };
    },
  });

  // The provider sends no `interval`, so clients would wait the RFC 8628
  // default of 5 s between polls; tests want a shorter, stated one.
  const interval = config.device_interval ?? 1;
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      ctx.body.interval = interval;
    }
  });

  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// Ends with its parent: when the test drops its handle, stdin closes.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));

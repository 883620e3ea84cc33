//! Shared by the benchmarks (a directory, so cargo does not take it for a
//! benchmark of its own).

use ring::signature as rsig;

/// A 2048-bit RSA attestation key, as Kubernetes signs service-account
/// tokens with: its PKCS#8 DER and its public modulus and exponent.
pub struct RsaKey {
    pub pkcs8: Vec<u8>,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

impl RsaKey {
    /// Generates one with `openssl` (ring cannot generate RSA keys).
    pub fn generate() -> Self {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()
            .expect("openssl is needed to create the RSA attestation key");
        assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
        let pair = rsig::RsaKeyPair::from_der(&out.stdout).expect("openssl produced an RSA private key");
        let c = rsig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        Self { pkcs8: out.stdout, n: c.n, e: c.e }
    }
}

//! Authentication of PBFT messages: who may sign what, and the two implementations.
//!
//! Every replica message and every client request carries a 64-byte signature over its
//! encoding (see [`super::wire`]). Signatures are *transferable*: a replica can show another
//! the prepares it collected (a prepared certificate in a view change) and the other checks
//! them without trusting the messenger. That is why signatures were chosen over MAC
//! authenticators, which need the extra view-change machinery of Castro and Liskov's BFT.
//!
//! * [`Ed25519Keys`] — the default: real Ed25519 signatures (`ed25519-dalek`). A replica holds
//!   its own signing key and the public keys of all replicas and of the clients it serves.
//! * [`SimKeys`] — a cheap, deterministic keyed hash for simulations and the model checker.
//!   It is **not secure** (anyone who knows the cluster secret can sign as anyone); a test
//!   that plays a Byzantine replica simply does not use the other principals' keys.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, Result};

/// A signature as carried on the wire.
pub type Signature = [u8; 64];

/// Who sent or signed a message: a replica (`0..n`) or a client (its own id space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// Replica `i`, `0 <= i < n`.
    Replica(u32),
    /// A client, by its id.
    Client(u64),
}

/// Signs this principal's messages and verifies everybody else's.
pub trait Authenticator {
    /// The signature of `data` by this principal.
    fn sign(&self, data: &[u8]) -> Signature;
    /// Whether `sig` is `signer`'s signature of `data`; `false` for an unknown signer.
    fn verify(&self, signer: Principal, data: &[u8], sig: &Signature) -> bool;
}

/// Ed25519 keys: this principal's signing key and the public keys of the others.
pub struct Ed25519Keys {
    signing: SigningKey,
    replicas: Vec<VerifyingKey>,
    clients: BTreeMap<u64, VerifyingKey>,
}

impl std::fmt::Debug for Ed25519Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Keys")
            .field("public", &self.signing.verifying_key())
            .field("replicas", &self.replicas.len())
            .field("clients", &self.clients.len())
            .finish()
    }
}

fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey> {
    VerifyingKey::from_bytes(bytes)
        .map_err(|_| Error::invalid("pbft: a public key is not a valid Ed25519 point"))
}

impl Ed25519Keys {
    /// The public key that belongs to the secret `seed` (32 random bytes, kept secret).
    pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
        SigningKey::from_bytes(seed).verifying_key().to_bytes()
    }

    /// Keys for the principal whose secret is `seed`, knowing the replicas' public keys
    /// (index = replica id) and those of the clients to serve (`(client id, public key)`).
    pub fn new(
        seed: &[u8; 32],
        replicas: &[[u8; 32]],
        clients: &[(u64, [u8; 32])],
    ) -> Result<Self> {
        let replicas = replicas
            .iter()
            .map(verifying_key)
            .collect::<Result<Vec<_>>>()?;
        let mut map = BTreeMap::new();
        for (id, key) in clients {
            map.insert(*id, verifying_key(key)?);
        }
        Ok(Ed25519Keys {
            signing: SigningKey::from_bytes(seed),
            replicas,
            clients: map,
        })
    }

    /// Adds (or replaces) the public key of client `id`.
    pub fn add_client(&mut self, id: u64, public_key: &[u8; 32]) -> Result<()> {
        self.clients.insert(id, verifying_key(public_key)?);
        Ok(())
    }
}

impl Authenticator for Ed25519Keys {
    fn sign(&self, data: &[u8]) -> Signature {
        self.signing.sign(data).to_bytes()
    }

    fn verify(&self, signer: Principal, data: &[u8], sig: &Signature) -> bool {
        let key = match signer {
            Principal::Replica(i) => self.replicas.get(i as usize),
            Principal::Client(c) => self.clients.get(&c),
        };
        let Some(key) = key else { return false };
        key.verify(data, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }
}

/// A deterministic keyed hash standing in for signatures in simulations and models: cheap and
/// reproducible, **not secure** (see the module docs). Signing is only possible as `me`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimKeys {
    me: Principal,
    cluster: u64,
}

impl SimKeys {
    /// The keys of `me` in the cluster named by `cluster` (principals of different clusters
    /// cannot verify each other).
    pub fn new(me: Principal, cluster: u64) -> Self {
        SimKeys { me, cluster }
    }

    fn mac(&self, signer: Principal, data: &[u8]) -> Signature {
        let mut sig = [0u8; 64];
        for (i, chunk) in sig.chunks_mut(8).enumerate() {
            // SipHash with fixed keys: deterministic within a build, which is all a simulation
            // needs.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.cluster, signer, i, data).hash(&mut h);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        sig
    }
}

impl Authenticator for SimKeys {
    fn sign(&self, data: &[u8]) -> Signature {
        self.mac(self.me, data)
    }

    fn verify(&self, signer: Principal, data: &[u8], sig: &Signature) -> bool {
        self.mac(signer, data) == *sig
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Box<A> {
    fn sign(&self, data: &[u8]) -> Signature {
        (**self).sign(data)
    }
    fn verify(&self, signer: Principal, data: &[u8], sig: &Signature) -> bool {
        (**self).verify(signer, data, sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_signs_and_refuses_forgeries() {
        let seeds: Vec<[u8; 32]> = (0..4u8).map(|i| [i + 1; 32]).collect();
        let pubs: Vec<[u8; 32]> = seeds.iter().map(Ed25519Keys::public_key).collect();
        let client_seed = [9u8; 32];
        let clients = [(7u64, Ed25519Keys::public_key(&client_seed))];
        let k0 = Ed25519Keys::new(&seeds[0], &pubs, &clients).unwrap();
        let k1 = Ed25519Keys::new(&seeds[1], &pubs, &clients).unwrap();
        let c = Ed25519Keys::new(&client_seed, &pubs, &[]).unwrap();
        let sig = k0.sign(b"vote");
        assert!(k1.verify(Principal::Replica(0), b"vote", &sig));
        assert!(
            !k1.verify(Principal::Replica(2), b"vote", &sig),
            "wrong signer"
        );
        assert!(
            !k1.verify(Principal::Replica(0), b"vote!", &sig),
            "other data"
        );
        assert!(
            !k1.verify(Principal::Replica(9), b"vote", &sig),
            "unknown replica"
        );
        let csig = c.sign(b"op");
        assert!(k0.verify(Principal::Client(7), b"op", &csig));
        assert!(
            !k0.verify(Principal::Client(8), b"op", &csig),
            "unknown client"
        );
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!k1.verify(Principal::Replica(0), b"vote", &bad));
    }

    #[test]
    fn sim_keys_bind_signer_and_data() {
        let a = SimKeys::new(Principal::Replica(0), 1);
        let b = SimKeys::new(Principal::Replica(1), 1);
        let s = a.sign(b"x");
        assert!(b.verify(Principal::Replica(0), b"x", &s));
        assert!(!b.verify(Principal::Replica(1), b"x", &s));
        assert!(!b.verify(Principal::Replica(0), b"y", &s));
        let other = SimKeys::new(Principal::Replica(1), 2);
        assert!(!other.verify(Principal::Replica(0), b"x", &s));
    }

    /// Sign/verify cost on this CPU; `cargo test --release -p erlmcp-flow --lib
    /// pbft::auth::tests::ed25519_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn ed25519_cost() {
        let seed = [5u8; 32];
        let k = Ed25519Keys::new(&seed, &[Ed25519Keys::public_key(&seed)], &[]).unwrap();
        let data = [7u8; 128];
        let n = 20_000;
        let t = std::time::Instant::now();
        let mut sig = [0u8; 64];
        for _ in 0..n {
            sig = k.sign(&data);
        }
        let sign = t.elapsed().as_nanos() as f64 / n as f64 / 1000.0;
        let t = std::time::Instant::now();
        for _ in 0..n {
            assert!(k.verify(Principal::Replica(0), &data, &sig));
        }
        let verify = t.elapsed().as_nanos() as f64 / n as f64 / 1000.0;
        eprintln!("ed25519 128 B: sign {sign:.1} us, verify {verify:.1} us");
    }
}

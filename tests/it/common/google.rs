//! A stand-in for Google: an RSA key made at runtime (no key file in the repo), a JWKS served on
//! 127.0.0.1, and ID tokens signed like Google's. The production verifier fetches from it unchanged.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    rsa::{KeyPair, KeySize},
    signature::KeyPair as _,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use serde_json::{Value, json};
use warp::Filter;

pub const CLIENT_ID: &str = "teachly-test.apps.googleusercontent.com";

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public_pem: String,
    jwk: Jwk,
}

pub struct TestGoogle {
    addr: std::net::SocketAddr,
    current: Mutex<Arc<SigningKey>>,
    served: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
    generation: AtomicUsize,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn new_key(kid: String) -> SigningKey {
    let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
    let private: Pkcs8V1Der = pair.as_der().expect("PKCS#8");
    let public: PublicKeyX509Der = pair.public_key().as_der().expect("SPKI");
    let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
        .expect("the key loads");
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("a JWK");
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    SigningKey {
        kid,
        encoding,
        public_pem: pem("PUBLIC KEY", public.as_ref()),
        jwk,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TestGoogle {
    pub async fn start() -> Self {
        let key = new_key("k1".into());
        let served = Arc::new(Mutex::new(JwkSet {
            keys: vec![key.jwk.clone()],
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (set, count) = (Arc::clone(&served), Arc::clone(&fetches));
        let jwks = warp::path!("jwks").map(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let body = set.lock().unwrap().clone();
            warp::reply::with_header(
                warp::reply::json(&body),
                "cache-control",
                "public, max-age=3600, must-revalidate",
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(jwks).incoming(listener).run());
        Self {
            addr,
            current: Mutex::new(Arc::new(key)),
            served,
            fetches,
            generation: AtomicUsize::new(1),
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Valid claims for `sub`, as Google issues them.
    pub fn claims(&self, sub: &str, name: &str) -> Value {
        json!({
            "iss": "https://accounts.google.com",
            "aud": CLIENT_ID,
            "sub": sub,
            "name": name,
            "picture": format!("https://example.com/{sub}.png"),
            "email": format!("{sub}@example.com"),
            "email_verified": true,
            "iat": now(),
            "exp": now() + 3600,
        })
    }

    fn key(&self) -> Arc<SigningKey> {
        Arc::clone(&self.current.lock().unwrap())
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key().kid.clone());
        self.sign_with_header(header, claims)
    }

    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key().encoding).expect("sign")
    }

    pub fn token(&self, sub: &str, name: &str) -> String {
        self.sign(&self.claims(sub, name))
    }

    pub fn public_key_pem(&self) -> String {
        self.key().public_pem.clone()
    }

    /// A new key becomes current, and the JWKS serves only it from now on.
    pub fn rotate(&self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let key = new_key(format!("k{generation}"));
        *self.served.lock().unwrap() = JwkSet {
            keys: vec![key.jwk.clone()],
        };
        *self.current.lock().unwrap() = Arc::new(key);
    }
}

//! Tokens from an identity provider: RS256/ES256 verified against the provider's JWKS, served
//! here by a local endpoint with key pairs generated for the test; key rotation; a flood of
//! unknown key ids costs the provider little, whether it answers, fails or hangs; requests whose
//! key is cached never wait for the provider; forged tokens are refused; a plain-http JWKS URL
//! outside loopback is refused at start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{Api, Env};

const ISSUER: &str = "https://idp.example.test/realms/acme";
const AUDIENCE: &str = "conveyor-api";

/// A local JWKS endpoint: serves whatever key set the test puts in, counts requests, and can
/// be made to fail (500) or to hang until released.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// While true, requests are held (and counted in `open`) until it turns false.
    hanging: Arc<tokio::sync::watch::Sender<bool>>,
    /// Requests being answered now: held by a hang, and not yet given up by the client.
    open: Arc<AtomicUsize>,
}

/// Counts a request in `Jwks::open` for as long as it is being answered (or until the client
/// goes away and the server drops it).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Jwks {
    async fn serve(&self) -> String {
        let state = self.clone();
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    let _open = Open::new(&state.open);
                    let _ = state.hanging.subscribe().wait_for(|h| !*h).await;
                    if state.down.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(axum::Json(state.keys.lock().unwrap().clone()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Holds every request from now on, until [`Jwks::release`].
    fn hang(&self) {
        self.hanging.send_replace(true);
    }

    /// Answers the held requests, and all that follow, at once.
    fn release(&self) {
        self.hanging.send_replace(false);
    }
}

/// A signing key with its public JWK.
struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key pair.
fn es256(kid: &str) -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    SigningKey {
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                     "x": b64(&point[1..33]), "y": b64(&point[33..65]) }),
    }
}

/// A fresh RSA key pair, made with the `openssl` command.
fn rs256(kid: &str) -> SigningKey {
    let openssl = |args: &[&str], input: Option<&[u8]>| {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the `openssl` command makes the test's RSA key: apt-get install openssl");
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let pem = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    );
    let modulus = openssl(&["rsa", "-noout", "-modulus"], Some(&pem));
    let hex = String::from_utf8(modulus).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    SigningKey {
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk: json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                     "n": b64(&n), "e": "AQAB" }),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An access token as a provider would issue it.
fn token(key: &SigningKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

fn claims() -> Value {
    json!({ "sub": "user-1", "tenant": "acme", "scope": "openid jobs:read jobs:write",
            "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now() })
}

async fn status(api: &Api, token: &str) -> u16 {
    api.with_token(token).get("/v1/jobs").await.0
}

/// Status and `Retry-After` (when there is one) of `GET /v1/jobs` with `token`.
async fn status_and_retry_after(api: &Api, token: &str) -> (u16, Option<u64>) {
    let res = api
        .with_token(token)
        .request(reqwest::Method::GET, "/v1/jobs")
        .send()
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    (res.status().as_u16(), retry_after)
}

async fn api_with_idp(alg: &str, jwks_url: &str) -> (Env, testkit::Proc, Api) {
    api_with_idp_and(alg, jwks_url, &[("CONVEYOR_JWKS_REFRESH_MIN_MS", "500")]).await
}

/// An API verifying tokens with `jwks_url`, with more settings in `vars`.
async fn api_with_idp_and(
    alg: &str,
    jwks_url: &str,
    vars: &[(&str, &str)],
) -> (Env, testkit::Proc, Api) {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_JWT_ALGORITHM", alg)
        .set("CONVEYOR_JWKS_URL", jwks_url)
        .set("CONVEYOR_JWT_ISSUER", ISSUER)
        .set("CONVEYOR_JWT_AUDIENCE", AUDIENCE);
    for (k, v) in vars {
        env.set(k, v);
    }
    let (proc, api) = env.spawn_http("api").await;
    (env, proc, api)
}

/// The most JWKS fetches allowed in `elapsed` with one per `interval_ms`.
fn fetch_bound(elapsed: Duration, interval_ms: u128) -> usize {
    1 + (elapsed.as_millis() / interval_ms) as usize
}

#[tokio::test]
async fn es256_tokens_from_a_jwks_with_key_rotation() {
    let jwks = Jwks::default();
    let url = jwks.serve().await;
    let k1 = es256("k1");
    jwks.publish(vec![k1.jwk.clone()]);
    let (_env, _proc, api) = api_with_idp("ES256", &url).await;

    let t1 = token(&k1, Some("k1"), claims());
    assert_eq!(status(&api, &t1).await, 200);
    assert_eq!(jwks.hits(), 1, "the key set is fetched once and cached");
    assert_eq!(status(&api, &t1).await, 200);
    assert_eq!(jwks.hits(), 1);

    // Bad tokens: wrong audience, wrong issuer, expired beyond the leeway, not yet valid,
    // another algorithm (HS256 "signed" with the public key), alg none, a jku pointing away.
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        token(&k1, Some("k1"), c)
    };
    for (what, bad) in [
        ("audience", with(json!({ "aud": "someone-else" }))),
        ("issuer", with(json!({ "iss": "https://evil.example" }))),
        ("expired", with(json!({ "exp": now() - 3600 }))),
        ("not yet valid", with(json!({ "nbf": now() + 3600 }))),
    ] {
        assert_eq!(status(&api, &bad).await, 401, "{what}");
    }
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(k1.jwk.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(status(&api, &hs).await, 401, "algorithm confusion");
    let payload = t1.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(status(&api, &none).await, 401, "alg none");
    let mut jku = Header::new(Algorithm::ES256);
    jku.kid = Some("attacker".into());
    jku.jku = Some("http://127.0.0.1:9/attacker-jwks".into());
    let attacker = es256("attacker");
    let forged = jsonwebtoken::encode(&jku, &claims(), &attacker.key).unwrap();
    assert_eq!(status(&api, &forged).await, 401, "jku is never followed");

    // The provider rotates: k2 is published, k1 retired. A token signed with k2 carries an
    // unknown kid, which refreshes the cache (at most every 500 ms here).
    let k2 = es256("k2");
    jwks.publish(vec![k2.jwk.clone()]);
    let t2 = token(&k2, Some("k2"), claims());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&api, &t2).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated key was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(&api, &t1).await,
        401,
        "the retired key no longer verifies"
    );

    // A flood of made-up key ids: all refused, and the provider is asked at most once per
    // refresh interval, not once per token. (First let the interval since the rotation pass.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = jwks.hits();
    let started = Instant::now();
    let flood = (0..60).map(|i| {
        let api = api.clone();
        let t = token(&k2, Some(&format!("made-up-{i}")), claims());
        async move { status(&api, &t).await }
    });
    let answers = futures::future::join_all(flood).await;
    let elapsed = started.elapsed();
    assert!(answers.iter().all(|s| *s == 401), "{answers:?}");
    let fetched = jwks.hits() - before;
    let bound = 1 + (elapsed.as_millis() / 500) as usize;
    eprintln!("60 unknown key ids in {elapsed:?}: {fetched} JWKS fetches (bound {bound})");
    assert!(
        (1..=bound).contains(&fetched),
        "{fetched} fetches for 60 unknown kids in {elapsed:?}"
    );

    // The provider goes down: cached keys keep working.
    jwks.down.store(true, Ordering::SeqCst);
    assert_eq!(status(&api, &t2).await, 200);
}

#[tokio::test]
async fn rs256_tokens_from_a_jwks() {
    let jwks = Jwks::default();
    let url = jwks.serve().await;
    let key = rs256("rsa-1");
    let other = es256("ec-1");
    // Keys of other types and uses are in real key sets too: they are skipped.
    jwks.publish(vec![
        other.jwk.clone(),
        json!({ "kty": "RSA", "use": "enc", "kid": "enc-1", "n": key.jwk["n"], "e": "AQAB" }),
        key.jwk.clone(),
    ]);
    let (_env, _proc, api) = api_with_idp("RS256", &url).await;
    assert_eq!(
        status(&api, &token(&key, Some("rsa-1"), claims())).await,
        200
    );
    assert_eq!(
        status(&api, &token(&other, Some("ec-1"), claims())).await,
        401,
        "an ES256 token where RS256 is configured"
    );
    assert_eq!(
        status(&api, &token(&key, Some("enc-1"), claims())).await,
        401,
        "an encryption key never verifies signatures"
    );
    // Scopes as Auth0 and Entra ID put them work as well as `scope`.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("scope");
    c["permissions"] = json!(["jobs:read"]);
    assert_eq!(status(&api, &token(&key, Some("rsa-1"), c)).await, 200);
}

#[tokio::test]
async fn a_failing_provider_costs_one_fetch_per_interval_and_requests_a_quick_503() {
    let jwks = Jwks::default();
    let url = jwks.serve().await;
    let k1 = es256("k1");
    jwks.publish(vec![k1.jwk.clone()]);
    jwks.down.store(true, Ordering::SeqCst);
    let (_env, _proc, api) =
        api_with_idp_and("ES256", &url, &[("CONVEYOR_JWKS_REFRESH_MIN_MS", "1000")]).await;
    let t1 = token(&k1, Some("k1"), claims());

    // No key was ever fetched, and the provider answers 500: 100 requests, half with the
    // provider's key id and half with made-up ones, are all told to come back later, and
    // the provider is asked once per interval, not once per request.
    let started = Instant::now();
    let flood = (0..100).map(|i| {
        let api = api.clone();
        let t = if i % 2 == 0 {
            t1.clone()
        } else {
            token(&k1, Some(&format!("made-up-{i}")), claims())
        };
        async move { status_and_retry_after(&api, &t).await }
    });
    let answers = futures::future::join_all(flood).await;
    let (elapsed, fetched) = (started.elapsed(), jwks.hits());
    eprintln!("100 requests, provider failing, no keys: {fetched} fetches in {elapsed:?}");
    for (status, retry_after) in &answers {
        assert_eq!(*status, 503, "{answers:?}");
        assert!(retry_after.is_some_and(|s| s >= 1), "{answers:?}");
    }
    assert!(
        (1..=fetch_bound(elapsed, 1000)).contains(&fetched),
        "{fetched} fetches for 100 requests in {elapsed:?}"
    );

    // The provider recovers: the next fetch (within an interval) brings the keys.
    jwks.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&api, &t1).await != 200 {
        assert!(Instant::now() < deadline, "the keys were never fetched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It fails again. Once the interval since the last fetch has passed, a made-up key id
    // starts one more fetch, which fails.
    jwks.down.store(true, Ordering::SeqCst);
    let before = jwks.hits();
    let made_up = token(&k1, Some("made-up"), claims());
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwks.hits() == before {
        assert!([401, 503].contains(&status(&api, &made_up).await));
        assert!(Instant::now() < deadline, "no fetch after the interval");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then cached keys keep answering, made-up key ids are told the keys cannot be had just
    // now, and the provider is not asked again within the interval.
    let before = jwks.hits();
    let started = Instant::now();
    let flood = (0..100).map(|i| {
        let api = api.clone();
        let (t, kid) = if i % 2 == 0 {
            (t1.clone(), None)
        } else {
            let kid = format!("made-up-{i}");
            (token(&k1, Some(&kid), claims()), Some(kid))
        };
        async move { (kid, status(&api, &t).await) }
    });
    let answers = futures::future::join_all(flood).await;
    let (elapsed, fetched) = (started.elapsed(), jwks.hits() - before);
    eprintln!("100 requests, provider failing, keys cached: {fetched} fetches in {elapsed:?}");
    for (kid, status) in &answers {
        match kid {
            None => assert_eq!(*status, 200, "a cached key: {answers:?}"),
            Some(_) => assert_eq!(*status, 503, "the provider fails: {answers:?}"),
        }
    }
    assert!(
        fetched <= fetch_bound(elapsed, 1000),
        "{fetched} fetches for 100 requests in {elapsed:?}"
    );
}

#[tokio::test]
async fn a_hanging_provider_holds_no_request_whose_key_is_cached() {
    let jwks = Jwks::default();
    let url = jwks.serve().await;
    let k1 = es256("k1");
    jwks.publish(vec![k1.jwk.clone()]);
    // The key set is old after 1 s; a fetch may take a minute (longer than this test).
    let (_env, _proc, api) = api_with_idp_and(
        "ES256",
        &url,
        &[
            ("CONVEYOR_JWKS_REFRESH_MIN_MS", "200"),
            ("CONVEYOR_JWKS_MAX_AGE_SECS", "1"),
            ("CONVEYOR_JWKS_FETCH_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let t1 = token(&k1, Some("k1"), claims());
    assert_eq!(status(&api, &t1).await, 200);
    assert_eq!(jwks.hits(), 1);

    // The provider hangs. Once the set is old, a request starts a refresh, which hangs; that
    // request, and every one after it, is answered from the cache meanwhile.
    jwks.hang();
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwks.hits() < 2 {
        assert_eq!(status(&api, &t1).await, 200);
        assert!(
            Instant::now() < deadline,
            "the old key set was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let concurrent = (0..10).map(|_| {
        let (api, t1) = (api.clone(), t1.clone());
        async move { status(&api, &t1).await }
    });
    let answers = futures::future::join_all(concurrent).await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    // All answered while the one refresh is still hanging, and no other fetch was started.
    assert_eq!(jwks.open(), 1, "the refresh still hangs");
    assert_eq!(jwks.hits(), 2, "one refresh at a time");

    // Released, the refresh completes and the cache is fresh again.
    jwks.release();
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwks.open() > 0 {
        assert!(Instant::now() < deadline, "the refresh never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&api, &t1).await, 200);
}

#[tokio::test]
async fn a_hanging_provider_costs_requests_one_fetch_timeout_at_most() {
    let jwks = Jwks::default();
    let url = jwks.serve().await;
    let k1 = es256("k1");
    jwks.publish(vec![k1.jwk.clone()]);
    jwks.hang();
    let (_env, _proc, api) = api_with_idp_and(
        "ES256",
        &url,
        &[
            ("CONVEYOR_JWKS_REFRESH_MIN_MS", "60000"),
            ("CONVEYOR_JWKS_FETCH_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    // No key yet, the provider hangs: concurrent requests share the one fetch and its timeout,
    // then are told when to come back; later ones do not wait at all.
    for round in 0..2 {
        let concurrent = (0..6).map(|i| {
            let api = api.clone();
            let t = token(
                &k1,
                Some(if i % 2 == 0 { "k1" } else { "made-up" }),
                claims(),
            );
            async move { status_and_retry_after(&api, &t).await }
        });
        let answers = futures::future::join_all(concurrent).await;
        for (status, retry_after) in &answers {
            assert_eq!(*status, 503, "round {round}: {answers:?}");
            assert!(
                retry_after.is_some_and(|s| (1..=60).contains(&s)),
                "round {round}: {answers:?}"
            );
        }
        assert_eq!(jwks.hits(), 1, "round {round}: one fetch in the interval");
    }
    jwks.release();
}

#[tokio::test]
async fn a_plain_http_jwks_url_outside_loopback_is_refused_at_start() {
    // A documentation address (TEST-NET-1): nothing is ever sent to it.
    let refused = "http://192.0.2.1/certs";
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_JWT_ALGORITHM", "ES256")
        .set("CONVEYOR_JWKS_URL", refused)
        .set("CONVEYOR_JWT_ISSUER", ISSUER)
        .set("CONVEYOR_JWT_AUDIENCE", AUDIENCE);
    let mut api = env.spawn("api").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.is_running() {
        assert!(
            Instant::now() < deadline,
            "the API started with {refused}; see {}",
            api.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&api.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.starts_with("conveyor: "))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(
        line.contains(&format!("CONVEYOR_JWKS_URL={refused} is refused"))
            && line.contains("https://")
            && line.contains("CONVEYOR_JWKS_ALLOW_HTTP=true"),
        "{line}"
    );
    // Refused before anything started: nothing else was logged.
    assert_eq!(log.lines().count(), 1, "{log}");

    // Allowed explicitly, it starts (and fetches nothing until a token comes).
    env.set("CONVEYOR_JWKS_ALLOW_HTTP", "true");
    let (_proc, _api) = env.spawn_http("api").await;
}

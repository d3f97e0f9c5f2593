//! Every way an access token can be wrong is a 401 in the spec's envelope.

use crate::envelope;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use polylogue_tests::{Cookies, TestCluster};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const PW: &str = "correct horse battery staple";

async fn refused(app: &TestCluster, token: &str) -> Value {
    let (status, body) = envelope(
        app.get_with("/api/version", &Cookies::with_access(token))
            .await,
    )
    .await;
    assert_eq!(status, 401, "token accepted: {token}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    body
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn secret(app: &TestCluster) -> Vec<u8> {
    app.settings.jwt.keys[0]
        .secret
        .expose_secret()
        .as_bytes()
        .to_vec()
}

fn sign(app: &TestCluster, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret(app))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_misused_tokens_are_refused() {
    let app = TestCluster::start().await;
    let cookies = app.signed_in("zed@example.com", PW).await;
    let good = cookies.access.clone().unwrap();
    assert_eq!(app.get_with("/api/version", &cookies).await.status(), 200);
    let claims = claims_of(&good);
    assert_eq!(claims["aud"], "polylogue-api");
    assert!(claims["jti"].is_string() && claims["sid"].is_string());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );

    // One flipped byte in the signature, then in the payload.
    let mut bytes = good.clone().into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    refused(&app, &String::from_utf8(bytes).unwrap()).await;
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims.clone();
    evil["sub"] = json!("someone-else");
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(evil.to_string()), parts[2]);
    refused(&app, &tampered).await;

    // alg: none, with and without a signature.
    let none_header = B64.encode(r#"{"alg":"none","typ":"JWT","kid":"test-1"}"#);
    let payload = B64.encode(claims.to_string());
    refused(&app, &format!("{none_header}.{payload}.")).await;
    refused(&app, &format!("{none_header}.{payload}.{}", parts[2])).await;

    // The right secret under another algorithm.
    refused(&app, &sign(&app, Algorithm::HS512, "test-1", &claims)).await;
    // RS256 header over an HMAC signature (algorithm confusion).
    let rs_header = B64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"test-1"}"#);
    let hs = sign(&app, Algorithm::HS256, "test-1", &claims);
    let hs_parts: Vec<&str> = hs.split('.').collect();
    refused(
        &app,
        &format!("{rs_header}.{}.{}", hs_parts[1], hs_parts[2]),
    )
    .await;
    // Unknown key id.
    refused(&app, &sign(&app, Algorithm::HS256, "other-kid", &claims)).await;
    // Another audience.
    let mut foreign = claims.clone();
    foreign["aud"] = json!("another-api");
    refused(&app, &sign(&app, Algorithm::HS256, "test-1", &foreign)).await;

    // Expired (beyond the 5 s leeway).
    let mut expired = claims.clone();
    expired["iat"] = json!(claims["iat"].as_u64().unwrap() - 2000);
    expired["exp"] = json!(claims["iat"].as_u64().unwrap() - 60);
    let body = refused(&app, &sign(&app, Algorithm::HS256, "test-1", &expired)).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // The refresh token is not an access token, in the cookie or as a bearer.
    let refresh = cookies.refresh.clone().unwrap();
    refused(&app, &refresh).await;
    let r = app
        .http
        .get(app.url("/api/version"))
        .bearer_auth(&refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Garbage.
    refused(&app, "not-a-jwt").await;
    refused(&app, "a.b.c").await;

    // And the genuine token still works after all that.
    assert_eq!(app.get_with("/api/version", &cookies).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_retired_key_is_refused_and_a_rotated_ring_keeps_sessions() {
    let app = TestCluster::start().await;
    let cookies = app.signed_in("yan@example.com", PW).await;
    // A second edge whose ring has a new signing key first and the old one still verifying.
    let mut rotated = app.settings.clone();
    rotated.jwt.keys.insert(
        0,
        polylogue_config::JwtKey {
            kid: "test-2".into(),
            secret: "n".repeat(40).into(),
        },
    );
    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let bus = polylogue_bus::Bus::connect(&rotated.nats, "edge")
        .await
        .unwrap();
    let edge = polylogue_edge_api::start(&rotated, bus, shutdown.clone(), &tracker)
        .await
        .unwrap();
    let r = app
        .http
        .get(format!("http://{}/api/version", edge.addr))
        .header("cookie", cookies.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "old key still verifies after rotation");
    // Retired: the ring no longer holds the old key.
    let mut retired = rotated.clone();
    retired.jwt.keys.truncate(1);
    let bus = polylogue_bus::Bus::connect(&retired.nats, "edge")
        .await
        .unwrap();
    let edge = polylogue_edge_api::start(&retired, bus, shutdown.clone(), &tracker)
        .await
        .unwrap();
    let r = app
        .http
        .get(format!("http://{}/api/version", edge.addr))
        .header("cookie", cookies.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    shutdown.cancel();
}

//! Session cookies: the access token (JWT, every path) and the refresh token (`/api` only).

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

pub const ACCESS: &str = "polylogue_access";
pub const REFRESH: &str = "polylogue_refresh";

#[derive(Clone, Debug)]
pub struct CookiePolicy {
    pub secure: bool,
    pub same_site: String,
}

impl CookiePolicy {
    fn attrs(&self, path: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "; HttpOnly{secure}; SameSite={}; Path={path}; Max-Age={max_age}",
            self.same_site
        )
    }

    pub fn access(&self, token: &str, max_age: u64) -> (HeaderName, HeaderValue) {
        set(format!("{ACCESS}={token}{}", self.attrs("/", max_age)))
    }

    pub fn refresh(&self, token: &str, max_age: u64) -> (HeaderName, HeaderValue) {
        set(format!("{REFRESH}={token}{}", self.attrs("/api", max_age)))
    }

    pub fn clear(&self) -> [(HeaderName, HeaderValue); 2] {
        [
            set(format!("{ACCESS}={}", self.attrs("/", 0))),
            set(format!("{REFRESH}={}", self.attrs("/api", 0))),
        ]
    }
}

fn set(value: String) -> (HeaderName, HeaderValue) {
    // Tokens are base64url/JWT characters only, so the value is always a valid header.
    (
        SET_COOKIE,
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

/// The value of cookie `name`, if the request carries it.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

//! Validation of user- or config-supplied provider base URLs.

use std::net::{Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// Base URL validation: scheme http/https only, has a host, no userinfo, no query/fragment.
/// When `allow_private` is false, hosts that literally are loopback, private (10/8,
/// 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, fe80::/10), unspecified
/// addresses (also as IPv4-mapped IPv6), or `localhost` / `*.localhost` are refused. Names are
/// not resolved here. Returns a message fit to show the user.
pub fn validate_base_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    let url =
        Url::parse(raw.trim()).map_err(|e| format!("the base URL is not a valid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "the base URL must use http or https, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the base URL must not contain a user name or password".into());
    }
    if url.query().is_some() {
        return Err("the base URL must not have a query string".into());
    }
    if url.fragment().is_some() {
        return Err("the base URL must not have a fragment".into());
    }
    let host = url.host().ok_or("the base URL has no host")?;
    if !allow_private && is_private(&host) {
        return Err(
            "the base URL points to a loopback, private or link-local address, which is not allowed"
                .into(),
        );
    }
    Ok(url)
}

fn is_private(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Host::Ipv4(ip) => private_v4(*ip),
        Host::Ipv6(ip) => private_v6(*ip),
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
}

fn private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_public_and_default_urls() {
        for u in [
            "https://api.anthropic.com",
            "https://api.openai.com/v1",
            "https://example.com:8443/proxy/v1/",
            "http://8.8.8.8/v1",
            "https://[2001:db8::1]/",
            " https://api.example.com ",
        ] {
            assert!(validate_base_url(u, false).is_ok(), "{u}");
        }
        assert_eq!(
            validate_base_url("https://api.openai.com/v1", false)
                .unwrap()
                .as_str(),
            "https://api.openai.com/v1"
        );
    }

    #[test]
    fn refuses_malformed_urls() {
        for u in [
            "api.openai.com",
            "ftp://example.com",
            "file:///etc/passwd",
            "https://user:pw@example.com",
            "https://user@example.com",
            "https://example.com/?key=1",
            "https://example.com/?",
            "https://example.com/#frag",
            "https://",
            "",
        ] {
            assert!(validate_base_url(u, true).is_err(), "{u}");
        }
    }

    #[test]
    fn refuses_private_hosts_unless_allowed() {
        for u in [
            "http://localhost:11434",
            "http://LOCALHOST.:11434",
            "http://api.localhost",
            "http://127.0.0.1:11434",
            "http://127.1.2.3",
            "http://0x7f.1",
            "http://10.0.0.5",
            "http://172.16.0.1",
            "http://172.31.255.255",
            "http://192.168.1.10",
            "http://169.254.169.254/latest",
            "http://0.0.0.0",
            "http://[::1]:8080",
            "http://[::]",
            "http://[fd00::1]",
            "http://[fc00::1]",
            "http://[fe80::1]",
            "http://[::ffff:127.0.0.1]",
            "http://[::ffff:10.1.2.3]",
        ] {
            let err = validate_base_url(u, false).unwrap_err();
            assert!(err.contains("not allowed"), "{u}: {err}");
            assert!(validate_base_url(u, true).is_ok(), "{u}");
        }
        for u in [
            "http://172.32.0.1",
            "http://11.0.0.1",
            "http://[fe00::1]",
            "http://169.255.0.1",
        ] {
            assert!(validate_base_url(u, false).is_ok(), "{u}");
        }
    }
}

//! Where requests go: `http://host:port[/path]`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given, for reports.
    pub url: String,
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The URL's path (`/` when it has none); the `url` workload requests it.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "`{url}`: only http:// targets are supported, not {scheme}://"
                ))
            }
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("`{url}`: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("`{url}`: {with_port} resolves to no address"))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_address_host_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/data/a.bin").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/data/a.bin")
        );
        let t = Target::parse("127.0.0.1:31415").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().addr.port(), 80);
        assert!(Target::parse("https://127.0.0.1:1/")
            .unwrap_err()
            .contains("only http://"));
        assert!(Target::parse("http:///x").is_err());
    }
}

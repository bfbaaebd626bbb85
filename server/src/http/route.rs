//! Request routing: method, path and query to a [`Route`], or the [`ApiError`] to answer.
//!
//! Pure and total (no I/O, never panics), so that it can be fuzzed: every input is either a
//! route or a 400/404/405 with a message naming what was wrong.

use floe_codec::{BlobId, SliverKind};
use hyper::Method;

use crate::http::error::ApiError;

/// What a request asks for, with its parameters parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/health`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `PUT|GET /v1/blobs/{id}/metadata`; PUT only (ext): `epochs`, how many epochs from the
    /// current one the blob is stored for (default 1), and `deletable=true`.
    Metadata {
        blob_id: BlobId,
        method: Method,
        epochs: u32,
        deletable: bool,
    },
    /// `DELETE /v1/blobs/{id}/metadata?endEpoch=E` (ext, node API): delete the blob on this
    /// node; a node that never heard of it remembers the deletion until epoch `E`.
    DeleteHere { blob_id: BlobId, end_epoch: u32 },
    /// `PUT|GET /v1/blobs/{id}/slivers/{pair}/{primary|secondary}`
    Sliver {
        blob_id: BlobId,
        method: Method,
        pair: u16,
        kind: SliverKind,
    },
    /// `GET /v1/blobs/{id}/recoverySymbols?targetPair=P&targetKind=primary|secondary[&limit=L]`:
    /// symbols of the slivers this node holds, for rebuilding one sliver elsewhere; with
    /// `targetPairs=0,3,5-9` (ext) instead of `targetPair`, for several slivers at once (each
    /// source sliver is expanded once for all of them).
    RecoverySymbols {
        blob_id: BlobId,
        target_pairs: Vec<u16>,
        target_kind: SliverKind,
        limit: Option<u32>,
    },
    /// `GET /v1/blobs/{id}/status`
    Status { blob_id: BlobId },
    /// `PUT /v1/blobs/{id}/slivers` (ext): a batch of slivers (`floe_codec::encode_sliver_batch`);
    /// `GET /v1/blobs/{id}/slivers?kind=primary|secondary&pairs=0,3,5-9` (ext): those of the
    /// listed pairs this node holds, as a batch.
    Slivers {
        blob_id: BlobId,
        method: Method,
        kind: Option<SliverKind>,
        pairs: Vec<u16>,
    },
    /// `PUT /v1/blobs?epochs=N[&deletable=true]`: the publisher.
    Publish { epochs: u32, deletable: bool },
    /// `GET /v1/blobs?after=ID&limit=L` (ext): the blobs whose metadata this node keeps, in
    /// blob ID order, for peers to sync from.
    List { after: Option<BlobId>, limit: u32 },
    /// `GET|HEAD /v1/blobs/{id}`: the aggregator.
    Blob { blob_id: BlobId, method: Method },
    /// `DELETE /v1/blobs/{id}` (ext): delete a deletable blob on every node.
    Delete { blob_id: BlobId },
    /// `GET /v1/shards/{shard}/slivers?after=ID&limit=L` (ext, node API): the slivers of a
    /// shard this node holds or gave away this epoch, for up to `limit` blobs after `after` in
    /// blob ID order (the new owner pulls a moving shard with it).
    ShardSlivers {
        shard: u16,
        after: Option<BlobId>,
        limit: u32,
    },
}

/// Most pairs one batch request may list. Why: the largest committee's n.
pub const BATCH_PAIRS_MAX: usize = floe_codec::N_SHARDS_MAX as usize;

/// Most blobs one listing returns.
pub const LIST_LIMIT_MAX: u32 = 10_000;

impl Route {
    /// A short fixed name for metrics labels (never a blob ID).
    pub fn name(&self) -> &'static str {
        let put = |m: &Method| *m == Method::PUT;
        match self {
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Metadata { method, .. } if put(method) => "put_metadata",
            Route::Metadata { .. } => "get_metadata",
            Route::DeleteHere { .. } => "delete_metadata",
            Route::Sliver { method, .. } if put(method) => "put_sliver",
            Route::Sliver { .. } => "get_sliver",
            Route::RecoverySymbols { .. } => "recovery_symbols",
            Route::Status { .. } => "status",
            Route::Slivers { method, .. } if put(method) => "put_slivers",
            Route::Slivers { .. } => "get_slivers",
            Route::Publish { .. } => "put_blob",
            Route::List { .. } => "list_blobs",
            Route::Blob { .. } => "get_blob",
            Route::Delete { .. } => "delete_blob",
            Route::ShardSlivers { .. } => "shard_slivers",
        }
    }
}

/// Longest path accepted. Why: every legitimate one is far shorter, and it bounds the work of
/// a hostile one.
pub const PATH_BYTES_MAX: usize = 512;
/// Longest query accepted. Why: a batch read lists pairs (as ranges where they run on).
pub const QUERY_BYTES_MAX: usize = 8192;

fn parse_blob_id(text: &str) -> Result<BlobId, ApiError> {
    text.parse().map_err(|e: floe_codec::BlobIdParseError| {
        ApiError::bad_request("invalidBlobId", e.to_string())
    })
}

fn parse_kind(text: &str, what: &str) -> Result<SliverKind, ApiError> {
    match text {
        "primary" => Ok(SliverKind::Primary),
        "secondary" => Ok(SliverKind::Secondary),
        _ => Err(ApiError::bad_request(
            "invalidSliverKind",
            format!("{what} must be `primary` or `secondary`, got {text:?}"),
        )),
    }
}

fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    // Plain decimal digits only: no sign, no spaces, no empty string.
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalidNumber",
            format!("{what} must be a decimal number, got {text:?}"),
        ));
    }
    text.parse().map_err(|_| {
        ApiError::bad_request("invalidNumber", format!("{what} is out of range: {text}"))
    })
}

/// `key=value` pairs of a query string; a key given twice, an unknown key or a pair without
/// `=` is an error.
fn query_pairs<'a>(
    query: Option<&'a str>,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ApiError::bad_request(
                "invalidQuery",
                format!("query parameter {pair:?} has no value"),
            ));
        };
        if !known.contains(&key) {
            return Err(ApiError::bad_request(
                "invalidQuery",
                format!(
                    "unknown query parameter {key:?}; known here: {}",
                    known.join(", ")
                ),
            ));
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::bad_request(
                "invalidQuery",
                format!("query parameter {key:?} is given twice"),
            ));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn lookup<'a>(pairs: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// `epochs=N` (default 1): how many epochs from the current one a blob is stored for.
fn parse_epochs(pairs: &[(&str, &str)]) -> Result<u32, ApiError> {
    let epochs = match lookup(pairs, "epochs") {
        Some(text) => parse_number::<u32>(text, "epochs")?,
        None => 1,
    };
    if epochs == 0 {
        return Err(ApiError::bad_request(
            "invalidNumber",
            "epochs must be at least 1",
        ));
    }
    Ok(epochs)
}

/// `0,3,5-9`: pair indices and inclusive ranges, at most [`BATCH_PAIRS_MAX`] in all.
fn parse_pair_list(text: &str) -> Result<Vec<u16>, ApiError> {
    let mut pairs = Vec::new();
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (
                parse_number::<u16>(a, "pair")?,
                parse_number::<u16>(b, "pair")?,
            ),
            None => {
                let p = parse_number::<u16>(item, "pair")?;
                (p, p)
            }
        };
        if first > last || pairs.len() + usize::from(last - first) + 1 > BATCH_PAIRS_MAX {
            return Err(ApiError::bad_request(
                "invalidQuery",
                format!(
                    "pairs: {item:?} is reversed, or the list names more than {BATCH_PAIRS_MAX}"
                ),
            ));
        }
        pairs.extend(first..=last);
    }
    Ok(pairs)
}

/// Writes pair indices as the compact list [`parse`] reads: runs become ranges.
pub fn format_pair_list(pairs: &[u16]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&sorted[i].to_string());
        } else {
            out.push_str(&format!("{}-{}", sorted[i], sorted[j]));
        }
        i = j + 1;
    }
    out
}

/// `deletable=true|false` (default false).
fn parse_deletable(pairs: &[(&str, &str)]) -> Result<bool, ApiError> {
    match lookup(pairs, "deletable") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalidQuery",
            format!("deletable must be `true` or `false`, got {other:?}"),
        )),
    }
}

/// Parses a request line into a route.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    if path.len() > PATH_BYTES_MAX || query.is_some_and(|q| q.len() > QUERY_BYTES_MAX) {
        return Err(ApiError::bad_request(
            "invalidPath",
            format!(
                "path longer than {PATH_BYTES_MAX} bytes or query longer than {QUERY_BYTES_MAX}"
            ),
        ));
    }
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let no_query = |route: Route| -> Result<Route, ApiError> {
        query_pairs(query, &[])?;
        Ok(route)
    };
    let get_only = |route: Route| -> Result<Route, ApiError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(ApiError::method_not_allowed(method, "GET, HEAD"));
        }
        no_query(route)
    };
    let get_or_put = |method: &Method| -> Result<Method, ApiError> {
        match *method {
            Method::GET | Method::HEAD | Method::PUT => Ok(method.clone()),
            _ => Err(ApiError::method_not_allowed(method, "GET, HEAD, PUT")),
        }
    };
    match segments.as_slice() {
        ["v1", "health"] => get_only(Route::Health),
        ["metrics"] => get_only(Route::Metrics),
        ["v1", "blobs", id, "metadata"] => {
            let blob_id = parse_blob_id(id)?;
            if method == Method::DELETE {
                let pairs = query_pairs(query, &["endEpoch"])?;
                let end_epoch = lookup(&pairs, "endEpoch")
                    .map(|text| parse_number::<u32>(text, "endEpoch"))
                    .transpose()?
                    .unwrap_or(0);
                return Ok(Route::DeleteHere { blob_id, end_epoch });
            }
            let method = match *method {
                Method::GET | Method::HEAD | Method::PUT => method.clone(),
                _ => {
                    return Err(ApiError::method_not_allowed(
                        method,
                        "GET, HEAD, PUT, DELETE",
                    ))
                }
            };
            let known: &[&str] = if method == Method::PUT {
                &["epochs", "deletable"]
            } else {
                &[]
            };
            let pairs = query_pairs(query, known)?;
            let epochs = parse_epochs(&pairs)?;
            let deletable = parse_deletable(&pairs)?;
            Ok(Route::Metadata {
                blob_id,
                method,
                epochs,
                deletable,
            })
        }
        ["v1", "blobs", id, "slivers", pair, kind] => {
            let blob_id = parse_blob_id(id)?;
            let pair = parse_number::<u16>(pair, "sliver pair index")?;
            let kind = parse_kind(kind, "sliver kind")?;
            let method = get_or_put(method)?;
            query_pairs(query, &[])?;
            Ok(Route::Sliver {
                blob_id,
                method,
                pair,
                kind,
            })
        }
        ["v1", "blobs", id, "recoverySymbols"] => {
            let blob_id = parse_blob_id(id)?;
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(method, "GET, HEAD"));
            }
            let pairs = query_pairs(query, &["targetPair", "targetPairs", "targetKind", "limit"])?;
            let missing = |key: &str| {
                ApiError::bad_request(
                    "invalidQuery",
                    format!("query parameter {key} is required (targetPair=P&targetKind=primary|secondary)"),
                )
            };
            let target_pairs = match (lookup(&pairs, "targetPair"), lookup(&pairs, "targetPairs")) {
                (Some(pair), None) => vec![parse_number::<u16>(pair, "targetPair")?],
                (None, Some(list)) => parse_pair_list(list)?,
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        "invalidQuery",
                        "give targetPair or targetPairs, not both",
                    ))
                }
                (None, None) => return Err(missing("targetPair")),
            };
            let target_kind = parse_kind(
                lookup(&pairs, "targetKind").ok_or_else(|| missing("targetKind"))?,
                "targetKind",
            )?;
            let limit = lookup(&pairs, "limit")
                .map(|text| parse_number::<u32>(text, "limit"))
                .transpose()?;
            Ok(Route::RecoverySymbols {
                blob_id,
                target_pairs,
                target_kind,
                limit,
            })
        }
        ["v1", "blobs", id, "status"] => {
            let blob_id = parse_blob_id(id)?;
            get_only(Route::Status { blob_id })
        }
        ["v1", "blobs", id, "slivers"] => {
            let blob_id = parse_blob_id(id)?;
            let method = get_or_put(method)?;
            if method == Method::PUT {
                query_pairs(query, &[])?;
                return Ok(Route::Slivers {
                    blob_id,
                    method,
                    kind: None,
                    pairs: Vec::new(),
                });
            }
            let pairs = query_pairs(query, &["kind", "pairs"])?;
            let missing = |key: &str| {
                ApiError::bad_request(
                    "invalidQuery",
                    format!(
                        "query parameter {key} is required (kind=primary|secondary&pairs=0,3,5-9)"
                    ),
                )
            };
            let kind = parse_kind(
                lookup(&pairs, "kind").ok_or_else(|| missing("kind"))?,
                "kind",
            )?;
            let list = parse_pair_list(lookup(&pairs, "pairs").ok_or_else(|| missing("pairs"))?)?;
            Ok(Route::Slivers {
                blob_id,
                method,
                kind: Some(kind),
                pairs: list,
            })
        }
        ["v1", "blobs"] => match *method {
            Method::PUT => {
                let pairs = query_pairs(query, &["epochs", "deletable"])?;
                let epochs = parse_epochs(&pairs)?;
                let deletable = parse_deletable(&pairs)?;
                Ok(Route::Publish { epochs, deletable })
            }
            Method::GET | Method::HEAD => {
                let pairs = query_pairs(query, &["after", "limit"])?;
                let after = lookup(&pairs, "after").map(parse_blob_id).transpose()?;
                let limit = match lookup(&pairs, "limit") {
                    Some(text) => parse_number::<u32>(text, "limit")?.clamp(1, LIST_LIMIT_MAX),
                    None => 1000,
                };
                Ok(Route::List { after, limit })
            }
            _ => Err(ApiError::method_not_allowed(method, "GET, HEAD, PUT")),
        },
        ["v1", "shards", shard, "slivers"] => {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(method, "GET, HEAD"));
            }
            let shard = parse_number::<u16>(shard, "shard")?;
            let pairs = query_pairs(query, &["after", "limit"])?;
            let after = lookup(&pairs, "after").map(parse_blob_id).transpose()?;
            let limit = match lookup(&pairs, "limit") {
                Some(text) => parse_number::<u32>(text, "limit")?.clamp(1, LIST_LIMIT_MAX),
                None => 1000,
            };
            Ok(Route::ShardSlivers {
                shard,
                after,
                limit,
            })
        }
        ["v1", "blobs", id] => {
            let blob_id = parse_blob_id(id)?;
            match *method {
                Method::GET | Method::HEAD => {
                    query_pairs(query, &[])?;
                    Ok(Route::Blob {
                        blob_id,
                        method: method.clone(),
                    })
                }
                Method::DELETE => no_query(Route::Delete { blob_id }),
                _ => Err(ApiError::method_not_allowed(method, "GET, HEAD, DELETE")),
            }
        }
        _ => Err(ApiError::not_found(
            "unknownPath",
            format!("no endpoint at {path:?}; see /v1/health and the API reference (api.md)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY";

    #[test]
    fn routes_parse() {
        let id: BlobId = ID.parse().unwrap();
        assert_eq!(parse(&Method::GET, "/v1/health", None), Ok(Route::Health));
        assert_eq!(
            parse(
                &Method::PUT,
                &format!("/v1/blobs/{ID}/slivers/7/secondary"),
                None
            ),
            Ok(Route::Sliver {
                blob_id: id,
                method: Method::PUT,
                pair: 7,
                kind: SliverKind::Secondary
            })
        );
        assert_eq!(
            parse(
                &Method::PUT,
                &format!("/v1/blobs/{ID}/metadata"),
                Some("epochs=5")
            ),
            Ok(Route::Metadata {
                blob_id: id,
                method: Method::PUT,
                epochs: 5,
                deletable: false
            })
        );
        assert_eq!(
            parse(
                &Method::PUT,
                &format!("/v1/blobs/{ID}/metadata"),
                Some("epochs=5&deletable=true")
            ),
            Ok(Route::Metadata {
                blob_id: id,
                method: Method::PUT,
                epochs: 5,
                deletable: true
            })
        );
        assert_eq!(
            parse(
                &Method::DELETE,
                &format!("/v1/blobs/{ID}/metadata"),
                Some("endEpoch=9")
            ),
            Ok(Route::DeleteHere {
                blob_id: id,
                end_epoch: 9
            })
        );
        assert_eq!(
            parse(&Method::DELETE, &format!("/v1/blobs/{ID}"), None),
            Ok(Route::Delete { blob_id: id })
        );
        let status = |m: Method, p: &str, q: Option<&str>| parse(&m, p, q).unwrap_err().status;
        let metadata = format!("/v1/blobs/{ID}/metadata");
        assert_eq!(status(Method::DELETE, &metadata, Some("endEpoch=x")), 400);
        assert_eq!(status(Method::POST, &metadata, None), 405);
        assert_eq!(
            status(Method::DELETE, &format!("/v1/blobs/{ID}"), Some("a=1")),
            400
        );
        assert_eq!(
            parse(
                &Method::GET,
                &format!("/v1/blobs/{ID}/recoverySymbols"),
                Some("targetPair=3&targetKind=primary")
            ),
            Ok(Route::RecoverySymbols {
                blob_id: id,
                target_pairs: vec![3],
                target_kind: SliverKind::Primary,
                limit: None
            })
        );
        let symbols = format!("/v1/blobs/{ID}/recoverySymbols");
        assert_eq!(
            parse(
                &Method::GET,
                &symbols,
                Some("targetPairs=1,4-6&targetKind=secondary&limit=2")
            ),
            Ok(Route::RecoverySymbols {
                blob_id: id,
                target_pairs: vec![1, 4, 5, 6],
                target_kind: SliverKind::Secondary,
                limit: Some(2)
            })
        );
        let status = |m: Method, p: &str, q: Option<&str>| parse(&m, p, q).unwrap_err().status;
        let both = Some("targetPair=1&targetPairs=2&targetKind=primary");
        assert_eq!(status(Method::GET, &symbols, both), 400);
        assert_eq!(
            status(Method::GET, &symbols, Some("targetKind=primary")),
            400
        );
        let reversed = Some("targetPairs=5-2&targetKind=primary");
        assert_eq!(status(Method::GET, &symbols, reversed), 400);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let status = |m: Method, p: &str, q: Option<&str>| parse(&m, p, q).unwrap_err().status;
        let sliver = format!("/v1/blobs/{ID}/slivers/1/primary");
        assert_eq!(status(Method::GET, "/v1/blobs/short/metadata", None), 400);
        assert_eq!(
            status(
                Method::GET,
                &format!("/v1/blobs/{ID}/slivers/-1/primary"),
                None
            ),
            400
        );
        assert_eq!(
            status(
                Method::GET,
                &format!("/v1/blobs/{ID}/slivers/70000/primary"),
                None
            ),
            400
        );
        assert_eq!(
            status(
                Method::GET,
                &format!("/v1/blobs/{ID}/slivers/1/tertiary"),
                None
            ),
            400
        );
        assert_eq!(status(Method::GET, &sliver, Some("x=1")), 400);
        assert_eq!(status(Method::POST, &sliver, None), 405);
        assert_eq!(status(Method::DELETE, "/v1/health", None), 405);
        assert_eq!(status(Method::GET, "/v2/nothing", None), 404);
        assert_eq!(
            status(
                Method::PUT,
                &format!("/v1/blobs/{ID}/metadata"),
                Some("epochs=0")
            ),
            400
        );
        assert_eq!(
            status(
                Method::PUT,
                &format!("/v1/blobs/{ID}/metadata"),
                Some("epochs=1&epochs=2")
            ),
            400
        );
        assert_eq!(
            status(
                Method::GET,
                &format!("/v1/blobs/{ID}/recoverySymbols"),
                Some("targetPair=1")
            ),
            400
        );
        assert_eq!(status(Method::GET, &"/a".repeat(300), None), 400);
        let batch = format!("/v1/blobs/{ID}/slivers");
        assert_eq!(status(Method::GET, &batch, Some("kind=primary")), 400);
        assert_eq!(
            status(Method::GET, &batch, Some("kind=primary&pairs=5-2")),
            400
        );
        assert_eq!(
            status(Method::GET, &batch, Some("kind=primary&pairs=0-65535")),
            400
        );
        assert_eq!(
            status(Method::GET, &batch, Some("kind=primary&pairs=1,,2")),
            400
        );
        assert_eq!(status(Method::PUT, "/v1/blobs", Some("epochs=0")), 400);
        assert_eq!(status(Method::PUT, "/v1/blobs", Some("deletable=yes")), 400);
        assert_eq!(status(Method::POST, "/v1/blobs", None), 405);
        assert_eq!(status(Method::PUT, &format!("/v1/blobs/{ID}"), None), 405);
        assert_eq!(status(Method::GET, "/v1/blobs", Some("after=nope")), 400);
    }

    #[test]
    fn user_and_batch_routes_parse() {
        let id: BlobId = ID.parse().unwrap();
        assert_eq!(
            parse(&Method::PUT, "/v1/blobs", Some("epochs=3&deletable=true")),
            Ok(Route::Publish {
                epochs: 3,
                deletable: true
            })
        );
        assert_eq!(
            parse(&Method::HEAD, &format!("/v1/blobs/{ID}"), None),
            Ok(Route::Blob {
                blob_id: id,
                method: Method::HEAD
            })
        );
        assert_eq!(
            parse(
                &Method::GET,
                "/v1/blobs",
                Some(&format!("after={ID}&limit=5"))
            ),
            Ok(Route::List {
                after: Some(id),
                limit: 5
            })
        );
        assert_eq!(
            parse(
                &Method::GET,
                &format!("/v1/blobs/{ID}/slivers"),
                Some("kind=secondary&pairs=0,3,5-7")
            ),
            Ok(Route::Slivers {
                blob_id: id,
                method: Method::GET,
                kind: Some(SliverKind::Secondary),
                pairs: vec![0, 3, 5, 6, 7]
            })
        );
        let pairs = [9u16, 1, 2, 3, 7, 7, 100];
        let text = format_pair_list(&pairs);
        assert_eq!(text, "1-3,7,9,100");
        assert_eq!(parse_pair_list(&text).unwrap(), vec![1, 2, 3, 7, 9, 100]);
    }
}

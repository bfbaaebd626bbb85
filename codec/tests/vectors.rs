//! Blob IDs computed by Walrus's own code (walrus-core 1.56), pinned.

use floe_codec::{compute_metadata, encode, BlobId, EncodingConfig};

fn blob_id(n: u16, blob: &[u8]) -> String {
    let config = EncodingConfig::new(n).unwrap();
    let encoded = encode(&config, blob).unwrap();
    let (metadata_only, _) = compute_metadata(&config, blob).unwrap();
    assert_eq!(*encoded.blob_id(), metadata_only);
    encoded.blob_id().to_string()
}

#[test]
fn walrus_regression_vector_at_n_10() {
    assert_eq!(
        blob_id(10, b"walrus blob id v1 regression test"),
        "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY"
    );
}

#[test]
fn walrus_empty_blob_at_n_10() {
    assert_eq!(
        blob_id(10, b""),
        "gLzpD29smKZiYJIWwKatudKr76kEprQeMPyAhuMbWd4"
    );
}

#[test]
fn published_id_parses_and_prints_back() {
    let text = "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY";
    assert_eq!(text.parse::<BlobId>().unwrap().to_string(), text);
}

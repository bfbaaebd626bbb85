//! Arbitrary bytes never make the BCS decoders panic or over-allocate, and every well-formed
//! value round-trips. (proptest prints and persists the seed of any failure.)

use floe_codec::{
    decode_metadata, decode_sliver, encode_metadata, encode_sliver, BlobMetadata, Sliver,
    SliverKind, SliverPairHashes,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bodies_are_rejected_or_decoded_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(metadata) = decode_metadata(&body) {
            prop_assert_eq!(encode_metadata(&metadata), body.clone());
        }
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            if let Ok(sliver) = decode_sliver(kind, &body) {
                prop_assert_eq!(encode_sliver(&sliver), body.clone());
            }
        }
    }

    #[test]
    fn metadata_round_trips(n in 4usize..40, blob_bytes in 0u64..100_000, seed in any::<u8>()) {
        let pairs = (0..n)
            .map(|i| SliverPairHashes {
                primary: [seed ^ i as u8; 32],
                secondary: [seed.wrapping_add(i as u8); 32],
            })
            .collect();
        let metadata = BlobMetadata::new(blob_bytes, pairs);
        prop_assert_eq!(decode_metadata(&encode_metadata(&metadata)).unwrap(), metadata);
    }

    #[test]
    fn slivers_round_trip(symbols in 0usize..300, half in 1u16..40, index in any::<u16>(), fill in any::<u8>()) {
        let symbol_bytes = 2 * half;
        let sliver = Sliver {
            kind: SliverKind::Secondary,
            index,
            symbol_bytes,
            data: vec![fill; symbols * usize::from(symbol_bytes)],
        };
        prop_assert_eq!(decode_sliver(SliverKind::Secondary, &encode_sliver(&sliver)).unwrap(), sliver);
    }
}

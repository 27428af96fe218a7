//! Property tests of the request decoders: random bytes and random field values never panic,
//! and every failure is INVALID_ARGUMENT naming a field.

use proptest::prelude::*;
use prost::Message;
use sextant::core::filter::validate_filter;
use sextant::core::ingest::{Limits, validate_event};
use sextant::error::Error;
use sextant::grpc::convert::incoming_event;
use sextant::grpc::metric::{filter_from_pb, metric_from_pb};
use sextant::pb;

fn value() -> impl Strategy<Value = pb::Value> {
    use pb::value::Kind;
    let kind = prop_oneof![
        any::<String>().prop_map(Kind::StringValue),
        any::<f64>().prop_map(Kind::NumberValue),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0)]
            .prop_map(Kind::NumberValue),
        any::<bool>().prop_map(Kind::BoolValue),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Kind::TimestampValue(prost_types::Timestamp { seconds, nanos })),
        Just(Kind::NullValue(0)),
    ];
    proptest::option::of(kind).prop_map(|kind| pb::Value { kind })
}

fn filter() -> impl Strategy<Value = pb::Filter> {
    let property = prop_oneof![any::<String>(), "user\\.[a-z]{0,5}".prop_map(String::from), Just(String::new())];
    (property, -2i32..16, proptest::collection::vec(value(), 0..5)).prop_map(|(property, op, values)| pb::Filter {
        property,
        op,
        values,
    })
}

fn assert_names_a_field(error: Error, prefix: &str) {
    match error {
        Error::InvalidArgument { field, .. } => assert!(field.starts_with(prefix), "{field:?} under {prefix:?}"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn filters_decode_or_name_the_field(filter in filter()) {
        match filter_from_pb("filters[0]", filter) {
            Ok(decoded) => {
                if let Err(error) = validate_filter("filters[0]", &decoded) {
                    assert_names_a_field(error, "filters[0]");
                }
            }
            Err(error) => assert_names_a_field(error, "filters[0]"),
        }
    }

    #[test]
    fn metric_definitions_decode_or_name_the_field(
        key in any::<String>(),
        kind in -1i32..15,
        formula in any::<String>(),
        property in any::<String>(),
        percentile in any::<f64>(),
        filters in proptest::collection::vec(filter(), 0..3),
        seconds in any::<i64>(),
    ) {
        let metric = pb::MetricDefinition {
            key,
            kind,
            formula,
            property,
            percentile,
            selector: Some(pb::EventSelector { event: "e".into(), filters }),
            window: Some(prost_types::Duration { seconds, nanos: 0 }),
            rolling_window: Some(prost_types::Duration { seconds: -seconds, nanos: 0 }),
            ..Default::default()
        };
        if let Err(error) = metric_from_pb(metric) {
            prop_assert!(matches!(error, Error::InvalidArgument { .. } | Error::FailedPrecondition(_)), "{error:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::TrackRequest::decode(bytes.as_slice()) {
            for (i, event) in request.events.into_iter().enumerate() {
                let incoming = incoming_event(event, 0);
                if let Ok(mut event) = incoming.event
                    && let Err(error) = validate_event(&mut event, incoming.encoded_len, &Limits::default(), 0)
                {
                    prop_assert!(matches!(error, Error::InvalidArgument { .. }), "event {i}: {error:?}");
                }
            }
        }
        // Whatever the bytes decode to, our decoders either accept it or name a field.
        if let Ok(request) = pb::CreateMetricRequest::decode(bytes.as_slice())
            && let Some(metric) = request.metric
            && let Err(error) = metric_from_pb(metric)
        {
            prop_assert!(matches!(&error, Error::InvalidArgument { field, .. } if !field.is_empty()), "{error:?}");
        }
        if let Ok(request) = pb::QueryMetricRequest::decode(bytes.as_slice()) {
            for filter in request.filters {
                if let Err(error) = filter_from_pb("filters[0]", filter) {
                    prop_assert!(
                        matches!(&error, Error::InvalidArgument { field, .. } if field.starts_with("filters[0]")),
                        "{error:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn events_with_random_fields_validate_or_name_the_field(
        event_id in any::<String>(),
        name in any::<String>(),
        user_id in any::<String>(),
        seconds in any::<i64>(),
        nanos in any::<i32>(),
        properties in proptest::collection::btree_map(any::<String>(), value(), 0..8),
    ) {
        let event = pb::Event {
            event_id,
            name,
            user_id,
            anonymous_id: String::new(),
            timestamp: Some(prost_types::Timestamp { seconds, nanos }),
            properties,
        };
        let incoming = incoming_event(event, 0);
        let checked = incoming.event.and_then(|mut e| validate_event(&mut e, incoming.encoded_len, &Limits::default(), 0));
        if let Err(error) = checked {
            prop_assert!(matches!(error, Error::InvalidArgument { ref field, .. } if !field.is_empty()), "{error:?}");
        }
    }
}

//! AppSync's scalars, serialised the way AppSync does so existing clients parse them unchanged.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, SecondsFormat, Utc};

/// `AWSJSON`: a JSON *string* in responses; input accepts that string or a plain object.
#[derive(Clone, Debug, PartialEq)]
pub struct AwsJson(pub serde_json::Value);

#[Scalar(name = "AWSJSON")]
impl ScalarType for AwsJson {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(text) => serde_json::from_str(&text)
                .map(AwsJson)
                .map_err(|e| InputValueError::custom(format!("AWSJSON string is not valid JSON: {e}"))),
            other => other.into_json().map(AwsJson).map_err(InputValueError::custom),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// `AWSDateTime`: RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T09:00:00.000Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwsDateTime(pub DateTime<Utc>);

#[Scalar(name = "AWSDateTime")]
impl ScalarType for AwsDateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => DateTime::parse_from_rfc3339(text)
                .map(|dt| AwsDateTime(dt.with_timezone(&Utc)))
                .map_err(|e| InputValueError::custom(format!("AWSDateTime must be RFC 3339: {e}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl From<DateTime<Utc>> for AwsDateTime {
    fn from(dt: DateTime<Utc>) -> Self {
        Self(dt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awsjson_is_sent_as_a_string_and_read_from_a_string_or_an_object() {
        let value = AwsJson(serde_json::json!({"a": 1}));
        assert_eq!(value.to_value(), Value::String("{\"a\":1}".into()));
        assert_eq!(AwsJson::parse(Value::String("{\"a\":1}".into())).unwrap(), value);
        let object = Value::from_json(serde_json::json!({"a": 1})).unwrap();
        assert_eq!(AwsJson::parse(object).unwrap(), value);
        assert!(AwsJson::parse(Value::String("{not json".into())).is_err());
    }

    #[test]
    fn awsdatetime_round_trips_in_rfc3339() {
        let parsed = AwsDateTime::parse(Value::String("2026-11-23T10:00:00+01:00".into())).unwrap();
        assert_eq!(
            parsed.to_value(),
            Value::String("2026-11-23T09:00:00.000Z".into())
        );
        assert!(AwsDateTime::parse(Value::String("yesterday".into())).is_err());
    }
}

//! Decoding CloudEvents from NATS messages, in either content mode: structured (the payload is
//! the CloudEvent JSON, what conveyor publishes) or binary (attributes as `ce-` headers, the
//! payload the data), which other producers may use.

use async_nats::HeaderMap;
use bytes::Bytes;
use events::{Command, DecodeError, Envelope, JobEvent, Payload};

/// A decoded CloudEvent and its structured JSON form.
#[derive(Debug, Clone)]
pub struct Decoded<P> {
    /// The event or command.
    pub envelope: Envelope<P>,
    /// The CloudEvent as structured JSON: the stored payload itself in structured mode (no copy),
    /// the envelope serialised in binary mode.
    pub json: Bytes,
}

/// Decodes a CloudEvent from a message's headers and payload: binary mode when
/// `ce-specversion` is among the headers, structured mode otherwise.
pub fn decode<P: Payload>(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Decoded<P>, DecodeError> {
    let envelope = envelope(headers, payload)?;
    let json = if is_binary(headers) {
        Bytes::from(envelope.to_json())
    } else {
        payload.clone()
    };
    Ok(Decoded { envelope, json })
}

/// The CloudEvent alone, in either content mode.
fn envelope<P: Payload>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<P>, DecodeError> {
    match headers.filter(|h| is_binary(Some(h))) {
        Some(h) => Envelope::from_binary(|name| h.get(name).map(|v| v.as_str()), payload),
        None => Envelope::from_json(payload),
    }
}

/// Whether a message is in binary content mode (its payload is not the CloudEvent JSON).
pub fn is_binary(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get("ce-specversion").is_some())
}

/// [`decode`], keeping only the domain event.
pub fn decode_event(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Envelope<JobEvent>, DecodeError> {
    envelope(headers, payload)
}

/// [`decode`], keeping only the command.
pub fn decode_command(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Envelope<Command>, DecodeError> {
    envelope(headers, payload)
}

#[cfg(test)]
mod tests {
    use events::job::CancelRequested;
    use events::{JobId, Tenant};

    use super::*;

    fn event() -> Envelope<JobEvent> {
        Envelope::new(
            "/conveyor/test",
            JobId::new(),
            Tenant::parse("acme").unwrap(),
            "noop".parse().unwrap(),
            JobEvent::CancelRequested(CancelRequested { reason: None }),
        )
    }

    #[test]
    fn structured_mode_keeps_the_stored_bytes() {
        let ev = event();
        let stored = Bytes::from(ev.to_json());
        let decoded = decode::<JobEvent>(None, &stored).unwrap();
        assert_eq!(decoded.envelope.id, ev.id);
        assert_eq!(decoded.json.as_ptr(), stored.as_ptr(), "no copy");
    }

    #[test]
    fn binary_mode_is_decoded_and_given_its_structured_form() {
        let ev = event();
        let value = ev.to_value();
        let mut headers = HeaderMap::new();
        for (name, v) in value.as_object().unwrap() {
            if let (false, Some(v)) = (name == "data", v.as_str()) {
                headers.insert(format!("ce-{name}").as_str(), v);
            }
        }
        let data = Bytes::from(serde_json::to_vec(&value["data"]).unwrap());
        assert!(is_binary(Some(&headers)));
        let decoded = decode::<JobEvent>(Some(&headers), &data).unwrap();
        assert_eq!(decoded.envelope.id, ev.id);
        assert_eq!(decoded.json, Bytes::from(ev.to_json()));
    }
}

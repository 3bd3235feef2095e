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
    match headers.filter(|h| is_binary(Some(h))) {
        Some(h) => {
            let envelope = Envelope::from_binary(|name| h.get(name).map(|v| v.as_str()), payload)?;
            let json = Bytes::from(envelope.to_json());
            Ok(Decoded { envelope, json })
        }
        None => Ok(Decoded {
            envelope: Envelope::from_json(payload)?,
            json: payload.clone(),
        }),
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
    decode(headers, payload).map(|d| d.envelope)
}

/// [`decode`], keeping only the command.
pub fn decode_command(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Envelope<Command>, DecodeError> {
    decode(headers, payload).map(|d| d.envelope)
}

//! The errors of the bus, each naming what failed, and whether a failure may pass by itself.
//!
//! async-nats reports a failure as an error *kind* (timed out, no responders, …), sometimes
//! carrying the JetStream API error the server answered (with its numeric code). [`Failure`]
//! keeps the error as its source and classifies it once, from those kinds and codes: a timeout
//! or a lost leader passes, a configuration the server cannot place (replicas on a single
//! server, too few resources) does not.

use std::error::Error as StdError;
use std::fmt;

use async_nats::jetstream::context::{
    AccountErrorKind, ConsumerInfoErrorKind, CreateKeyValueErrorKind, CreateStreamErrorKind,
    GetStreamErrorKind, KeyValueErrorKind, ObjectStoreErrorKind, PublishErrorKind,
    RequestErrorKind,
};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{consumer, kv, object_store, stream};

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not reach the server.
    #[error("cannot connect to NATS at {url}: {source}. Start it with `scripts/up` (or set CONVEYOR_NATS_URL)")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// `CONVEYOR_NATS_URL` is not a list of NATS server URLs.
    #[error("CONVEYOR_NATS_URL: {0}")]
    BadUrl(String),
    /// The server is too old.
    #[error("nats-server {version} at {url} is too old: conveyor needs 2.10 or newer with JetStream; set CONVEYOR_NATS_URL to a current server (`scripts/up` runs one and `conveyor dev` prints its address)")]
    ServerTooOld {
        /// The version the server announced.
        version: String,
        /// The URL it was reached at.
        url: String,
    },
    /// JetStream is not enabled.
    #[error("JetStream is not enabled on the NATS server: start nats-server with -js")]
    NoJetStream,
    /// A stream or consumer exists with a configuration other than the one conveyor needs.
    #[error("{what} exists with a different configuration ({field}: server has {got}, conveyor needs {want}); fix or delete it")]
    Mismatch {
        /// Stream or consumer name.
        what: String,
        /// The differing field.
        field: &'static str,
        /// What the server has.
        got: String,
        /// What conveyor needs.
        want: String,
    },
    /// Creating, reading or querying a stream (its info, a stored message) failed.
    #[error("JetStream stream: {0}")]
    Stream(Failure),
    /// Creating, reading or pulling from a consumer failed.
    #[error("JetStream consumer: {0}")]
    Consumer(Failure),
    /// A key-value bucket or the object store failed.
    #[error("JetStream bucket: {0}")]
    Bucket(Failure),
    /// A core NATS subscription or publish failed.
    #[error("NATS: {0}")]
    Core(Failure),
    /// A stored message is not a CloudEvent conveyor can read.
    #[error("unreadable message: {0}")]
    Decode(#[from] events::DecodeError),
    /// A subscription, watch or ordered reader ended while it was still wanted.
    #[error("{0} ended")]
    Ended(&'static str),
    /// Not connected to NATS right now (the client keeps reconnecting).
    #[error("not connected to NATS")]
    Disconnected,
    /// Too many publishes of this process are waiting for their acks.
    #[error("too many publishes in flight")]
    Busy,
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed: {source}")]
    Publish {
        /// Subject.
        subject: String,
        /// Why.
        source: Failure,
        /// Whether the stream refused it because it is full.
        full: bool,
    },
}

/// Result with the bus error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failed stream request.
    pub fn stream(e: impl Into<Failure>) -> Self {
        Self::Stream(e.into())
    }

    /// A failed consumer request.
    pub fn consumer(e: impl Into<Failure>) -> Self {
        Self::Consumer(e.into())
    }

    /// A failed bucket (key-value or object store) request.
    pub fn bucket(e: impl Into<Failure>) -> Self {
        Self::Bucket(e.into())
    }

    /// A failed core NATS request.
    pub fn core(e: impl Into<Failure>) -> Self {
        Self::Core(e.into())
    }

    /// Whether the failure may pass by itself (a timeout, no responder, a lost connection), so
    /// trying again is worth it, rather than a configuration the server refuses or a mismatch.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Stream(f) | Self::Consumer(f) | Self::Bucket(f) | Self::Core(f) => {
                f.is_transient()
            }
            Self::Ended(_) | Self::Disconnected | Self::Busy => true,
            _ => false,
        }
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A failed request to the NATS server: its cause, classified once.
#[derive(Debug)]
pub struct Failure {
    source: BoxError,
    transient: bool,
    code: Option<ErrorCode>,
}

impl Failure {
    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The JetStream API error code the server answered, if it answered one.
    pub fn api_code(&self) -> Option<u64> {
        self.code.map(|c| c.0)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// JetStream API errors that no retry fixes: the server cannot place what was asked.
const LASTING_CODES: [ErrorCode; 6] = [
    ErrorCode::INSUFFICIENT_RESOURCES,
    ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
    ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
    ErrorCode::STORAGE_RESOURCES_EXCEEDED,
    ErrorCode::MEMORY_RESOURCES_EXCEEDED,
    ErrorCode::STREAM_INVALID_CONFIG,
];

/// What an async-nats error kind says about a failure.
pub trait Kind: Clone + fmt::Debug + fmt::Display + PartialEq + Send + Sync + 'static {
    /// The JetStream API error the kind carries, if any.
    fn api_error(&self) -> Option<&async_nats::jetstream::Error> {
        None
    }

    /// Whether the kind itself says retrying cannot help (an invalid name, an unsupported
    /// option); API errors are judged by their code.
    fn lasting(&self) -> bool {
        false
    }
}

impl<K: Kind> From<async_nats::error::Error<K>> for Failure {
    fn from(e: async_nats::error::Error<K>) -> Self {
        let kind = e.kind();
        // The API error is in the kind (`GetStreamErrorKind::JetStream`) or among the causes
        // (a publish ack, a key-value create).
        let code = kind
            .api_error()
            .map(|api| api.error_code())
            .or_else(|| api_code_in(&e));
        let lasting = kind.lasting() || code.is_some_and(|c| LASTING_CODES.contains(&c));
        Self {
            source: Box::new(e),
            transient: !lasting,
            code,
        }
    }
}

impl From<BoxError> for Failure {
    /// An error async-nats reports without a kind (a message that is not a JetStream one):
    /// taken as passing.
    fn from(source: BoxError) -> Self {
        let code = api_code_in(source.as_ref());
        Self {
            source,
            transient: true,
            code,
        }
    }
}

impl From<std::io::Error> for Failure {
    /// Reading an object of the object store failed midway: taken as passing.
    fn from(e: std::io::Error) -> Self {
        Self {
            source: Box::new(e),
            transient: true,
            code: None,
        }
    }
}

/// The code of the first JetStream API error among `e` and its causes.
fn api_code_in(e: &(dyn StdError + 'static)) -> Option<ErrorCode> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(api) = c.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(api.error_code());
        }
        // A bucket's creation carries its stream's, whose API error is in the kind.
        if let Some(api) = c
            .downcast_ref::<async_nats::error::Error<CreateStreamErrorKind>>()
            .and_then(|create| create.kind().api_error().cloned())
        {
            return Some(api.error_code());
        }
        cause = c.source();
    }
    None
}

/// Kinds that only ever pass (timeouts, requests, not found) or never carry an API error.
macro_rules! passing_kinds {
    ($($kind:ty),* $(,)?) => { $(impl Kind for $kind {})* };
}

passing_kinds!(
    RequestErrorKind,
    ObjectStoreErrorKind,
    KeyValueErrorKind,
    PublishErrorKind,
    stream::DirectGetErrorKind,
    stream::ConsumerUpdateErrorKind,
    kv::StatusErrorKind,
    kv::PutErrorKind,
    kv::CreateErrorKind,
    kv::EntryErrorKind,
    kv::WatchErrorKind,
    kv::UpdateErrorKind,
    object_store::GetErrorKind,
    object_store::PutErrorKind,
    consumer::StreamErrorKind,
    consumer::pull::BatchErrorKind,
    consumer::pull::MessagesErrorKind,
    async_nats::SubscribeErrorKind,
    async_nats::PublishErrorKind,
    async_nats::client::FlushErrorKind,
    kv::WatcherErrorKind,
);

/// Kinds with a `JetStream(api error)` variant and invalid-name variants.
macro_rules! api_kinds {
    ($($kind:ident :: { $($lasting:ident),* }),* $(,)?) => {$(
        impl Kind for $kind {
            fn api_error(&self) -> Option<&async_nats::jetstream::Error> {
                match self {
                    Self::JetStream(e) => Some(e),
                    _ => None,
                }
            }

            fn lasting(&self) -> bool {
                false $(|| matches!(self, Self::$lasting))*
            }
        }
    )*};
}

use stream::ConsumerErrorKind;

api_kinds!(
    GetStreamErrorKind::{EmptyName, InvalidStreamName},
    CreateStreamErrorKind::{EmptyStreamName, InvalidStreamName, DomainAndExternalSet},
    ConsumerInfoErrorKind::{InvalidName},
    ConsumerErrorKind::{InvalidName, InvalidConsumerType},
    AccountErrorKind::{},
);

impl Kind for CreateKeyValueErrorKind {
    fn lasting(&self) -> bool {
        matches!(
            self,
            Self::InvalidStoreName | Self::TooLongHistory | Self::LimitMarkersNotSupported
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u64) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 500, "err_code": code, "description": "test"
        }))
        .unwrap()
    }

    #[test]
    fn classified_from_kinds_and_codes() {
        let timeout = async_nats::error::Error::new(RequestErrorKind::TimedOut);
        assert!(Error::stream(timeout).is_transient());
        let r3_on_one_server = async_nats::error::Error::new(CreateStreamErrorKind::JetStream(
            api(ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED.0),
        ));
        assert!(!Error::stream(r3_on_one_server).is_transient());
        let leader_gone = async_nats::error::Error::new(GetStreamErrorKind::JetStream(api(10008)));
        assert!(Error::stream(leader_gone).is_transient());
        let full = Failure::from(async_nats::error::Error::with_source(
            PublishErrorKind::Other,
            api(ErrorCode::STREAM_STORE_FAILED.0),
        ));
        assert_eq!(full.api_code(), Some(10077));
        let r3_bucket = async_nats::error::Error::with_source(
            CreateKeyValueErrorKind::BucketCreate,
            async_nats::error::Error::new(CreateStreamErrorKind::JetStream(api(
                ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED.0,
            ))),
        );
        assert!(!Error::bucket(r3_bucket).is_transient());
    }
}

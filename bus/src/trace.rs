//! Trace context across the bus.
//!
//! Every CloudEvent carries the W3C `traceparent` of the span that published it (the
//! Distributed Tracing extension). A consumer continues that trace: its span for the message is
//! a child of the publisher's, and what it publishes in turn carries its own span's context. So
//! one trace id runs from the API request that submitted a job through the worker's attempts,
//! the projector's writes and the webhook delivery.
//!
//! Spans are `tracing` spans; when the process has the OpenTelemetry layer installed (the
//! `conveyor` binary always does; it exports over OTLP when configured), their ids are
//! OpenTelemetry's. Without the layer (a library embedder that has none) the trace is continued
//! by hand, with fresh span ids.

use events::TraceParent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of `parent` (when there is one) and returns the `traceparent` that
/// names `span`: what the messages published within it carry. Records the trace id in the
/// span's `trace_id` field, if it has one, so logs carry it.
pub fn continue_trace(span: &Span, parent: Option<&TraceParent>) -> TraceParent {
    if let Some(parent) = parent.and_then(span_context) {
        // Fails only without the OpenTelemetry layer, or on a disabled span: then the trace is
        // continued by hand below.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    let own = span.context().span().span_context().clone();
    let tp = if own.is_valid() {
        TraceParent::from_parts(
            &own.trace_id().to_string(),
            &own.span_id().to_string(),
            own.trace_flags().to_u8(),
        )
    } else {
        None
    }
    .unwrap_or_else(|| parent.map_or_else(TraceParent::generate, TraceParent::child));
    span.record("trace_id", tp.trace_id());
    tp
}

fn span_context(tp: &TraceParent) -> Option<SpanContext> {
    let sc = SpanContext::new(
        TraceId::from_hex(tp.trace_id()).ok()?,
        SpanId::from_hex(tp.span_id()).ok()?,
        TraceFlags::new(tp.flags()),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_layer_the_trace_goes_on_by_hand() {
        let parent = TraceParent::generate();
        let span = tracing::info_span!("x", trace_id = tracing::field::Empty);
        let tp = continue_trace(&span, Some(&parent));
        assert_eq!(tp.trace_id(), parent.trace_id());
        assert_ne!(tp.span_id(), parent.span_id());
        let fresh = continue_trace(&span, None);
        assert_ne!(fresh.trace_id(), parent.trace_id());
    }
}

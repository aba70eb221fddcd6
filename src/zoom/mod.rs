//! The only code that knows Zoom's wire formats: WebSocket frames, OAuth,
//! webhooks, REST paths, meeting UUID encoding and the event types Zoom sends.

pub mod event_types;
pub mod frame;
pub mod missed;
pub mod oauth;
pub mod ratelimit;
pub mod rest;
pub mod token;
pub mod uuid;
pub mod webhook;
pub mod websocket;

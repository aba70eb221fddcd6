//! The only code that knows Zoom's wire formats: WebSocket frames, OAuth,
//! webhooks, REST paths and meeting UUID encoding.

pub mod frame;
pub mod missed;
pub mod oauth;
pub mod ratelimit;
pub mod rest;
pub mod token;
pub mod uuid;
pub mod webhook;
pub mod websocket;

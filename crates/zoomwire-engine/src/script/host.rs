//! Host functions: the only way out of the sandbox.
//!
//! Each function turns its arguments into an effect request (names and JSON
//! shapes as documented in [`crate::effects`]) and hands it to the current
//! run's [`RunEffects`](crate::effects::gateway::RunEffects), found in the
//! thread-local the pool worker sets. The gateway checks capabilities, records
//! and replays; this module only translates. An effect's failure is thrown
//! into the script as a catchable map `#{effect, kind, message, code,
//! status}`, except a call past `max_effects`, which ends the run like any
//! other limit. Arguments are measured before they are converted to JSON or
//! text (a shared string counts once per place it appears), so a value that
//! breaks the size limits fails the run instead of being copied out in full.
//! Conditions get the pure functions only (`zoom::uuid`).

use rhai::{
    Dynamic, Engine, EvalAltResult, FuncRegistration, ImmutableString, Map, Module,
    NativeCallContext,
};
use serde_json::{Value, json};

use super::run::{
    EFFECTS_TOKEN, MOVED_TOKEN, current_effects, hold_log, is_last_effect, note_thrown,
    runs_inline, stay_inline, terminate,
};
use super::value::{SizeLimits, exceeds_depth, from_json, oversized, to_json};
use crate::duration::parse_seconds_or_duration;
use crate::effects::gateway::RunEffects;
use crate::effects::{EffectError, EffectName};

type HostResult = Result<Dynamic, Box<EvalAltResult>>;

/// The longest log line a script may write, in characters.
const MAX_LOG_CHARS: usize = 10_000;

/// Registers every host function of the Script engine; `sizes` bounds
/// their arguments.
pub(crate) fn register_script_functions(engine: &mut Engine, sizes: SizeLimits) {
    engine.register_static_module("zoom", zoom_module(sizes, true).into());
    engine.register_static_module("slack", slack_module(sizes).into());
    engine.register_static_module("email", email_module(sizes).into());
    engine.register_static_module("http", http_module(sizes).into());
    engine.register_static_module("log", log_module(sizes).into());
    engine.register_static_module("state", state_module(sizes).into());
    FuncRegistration::new("now")
        .with_volatility(true)
        .register_into_engine(engine, now);
    // `print` and `debug` cannot fail: a run that must move ends at its next
    // operation instead.
    engine.on_print(|text| {
        let _ = write_log("info", text.to_string());
    });
    engine.on_debug(|text, _, _| {
        let _ = write_log("debug", text.to_string());
    });
}

/// Registers the pure host functions of the Condition engine.
pub(crate) fn register_condition_functions(engine: &mut Engine) {
    let unused = SizeLimits {
        array: 0,
        map: 0,
        string: 0,
        key: 0,
        depth: 0,
    };
    engine.register_static_module("zoom", zoom_module(unused, false).into());
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
}

/// Adds an effectful function: volatile, so the optimizer never runs it early.
macro_rules! effect_fn {
    ($module:expr, $name:expr, $func:expr) => {
        FuncRegistration::new($name)
            .in_internal_namespace()
            .with_volatility(true)
            .set_into_module($module, $func)
    };
}

fn zoom_module(sizes: SizeLimits, with_effects: bool) -> Module {
    let mut module = Module::new();
    FuncRegistration::new("uuid")
        .in_internal_namespace()
        .set_into_module(&mut module, |uuid: ImmutableString| {
            crate::zoom::uuid::encode_uuid(&uuid)
        });
    if !with_effects {
        return module;
    }
    let m = &mut module;
    effect_fn!(m, "get", move |path: ImmutableString| {
        perform(
            EffectName::ZoomGet.as_str(),
            json!({"path": path.as_str(), "params": {}}),
        )
    });
    effect_fn!(m, "get", move |path: ImmutableString, params: Map| {
        let params = arg(&params.into(), &sizes, "params")?;
        perform(
            EffectName::ZoomGet.as_str(),
            json!({"path": path.as_str(), "params": params}),
        )
    });
    effect_fn!(
        m,
        "paginate",
        move |path: ImmutableString, items_key: ImmutableString| {
            perform(
                EffectName::ZoomPaginate.as_str(),
                json!({"path": path.as_str(), "items_key": items_key.as_str(), "params": {}}),
            )
        }
    );
    effect_fn!(
        m,
        "paginate",
        move |path: ImmutableString, items_key: ImmutableString, params: Map| {
            let params = arg(&params.into(), &sizes, "params")?;
            perform(
                EffectName::ZoomPaginate.as_str(),
                json!({"path": path.as_str(), "items_key": items_key.as_str(), "params": params}),
            )
        }
    );
    for (name, effect) in [
        ("post", EffectName::ZoomPost.as_str()),
        ("patch", EffectName::ZoomPatch.as_str()),
        ("put", EffectName::ZoomPut.as_str()),
    ] {
        effect_fn!(m, name, move |path: ImmutableString, body: Dynamic| {
            let body = arg(&body, &sizes, "body")?;
            perform(
                effect,
                json!({"path": path.as_str(), "params": {}, "body": body}),
            )
        });
        effect_fn!(m, name, move |path: ImmutableString,
                                  params: Map,
                                  body: Dynamic| {
            let params = arg(&params.into(), &sizes, "params")?;
            let body = arg(&body, &sizes, "body")?;
            perform(
                effect,
                json!({"path": path.as_str(), "params": params, "body": body}),
            )
        });
    }
    effect_fn!(m, "delete", move |path: ImmutableString| {
        perform(
            EffectName::ZoomDelete.as_str(),
            json!({"path": path.as_str(), "params": {}}),
        )
    });
    effect_fn!(m, "delete", move |path: ImmutableString, params: Map| {
        let params = arg(&params.into(), &sizes, "params")?;
        perform(
            EffectName::ZoomDelete.as_str(),
            json!({"path": path.as_str(), "params": params}),
        )
    });
    effect_fn!(
        m,
        "download",
        move |file: Dynamic, dest: ImmutableString| {
            let file = arg(&file, &sizes, "file")?;
            perform(
                EffectName::ZoomDownload.as_str(),
                json!({"file": file, "dest": dest.as_str()}),
            )
        }
    );
    module
}

fn slack_module(sizes: SizeLimits) -> Module {
    let mut module = Module::new();
    let m = &mut module;
    effect_fn!(m, "post", move |context: NativeCallContext,
                                channel: ImmutableString,
                                text: Dynamic| {
        let args = json!({"channel": channel.as_str(), "text": text_of(&text, &sizes)?});
        perform_maybe_last(&context, EffectName::SlackPost.as_str(), args)
    });
    effect_fn!(m, "post", move |context: NativeCallContext,
                                message: Map| {
        let message = arg(&message.into(), &sizes, "message")?;
        perform_maybe_last(&context, EffectName::SlackPost.as_str(), message)
    });
    effect_fn!(
        m,
        "webhook",
        move |context: NativeCallContext, name: ImmutableString, message: Dynamic| {
            let args = if message.is_map() {
                json!({"name": name.as_str(), "payload": arg(&message, &sizes, "payload")?})
            } else {
                json!({"name": name.as_str(), "text": text_of(&message, &sizes)?})
            };
            perform_maybe_last(&context, EffectName::SlackWebhook.as_str(), args)
        }
    );
    module
}

fn email_module(sizes: SizeLimits) -> Module {
    let mut module = Module::new();
    effect_fn!(
        &mut module,
        "send",
        move |context: NativeCallContext, message: Map| {
            let message = arg(&message.into(), &sizes, "message")?;
            perform_maybe_last(&context, EffectName::EmailSend.as_str(), message)
        }
    );
    module
}

fn http_module(sizes: SizeLimits) -> Module {
    let mut module = Module::new();
    effect_fn!(&mut module, "request", move |request: Map| {
        let request = arg(&request.into(), &sizes, "request")?;
        perform(EffectName::HttpRequest.as_str(), request)
    });
    module
}

fn log_module(sizes: SizeLimits) -> Module {
    let mut module = Module::new();
    for level in ["info", "warn", "error"] {
        effect_fn!(&mut module, level, move |message: Dynamic| {
            write_log(level, text_of(&message, &sizes)?)
        });
    }
    module
}

fn state_module(sizes: SizeLimits) -> Module {
    let mut module = Module::new();
    let m = &mut module;
    effect_fn!(m, "get", move |key: ImmutableString| {
        perform(EffectName::StateGet.as_str(), json!({"key": key.as_str()}))
    });
    effect_fn!(m, "set", move |key: ImmutableString, value: Dynamic| {
        let value = arg(&value, &sizes, "value")?;
        perform(
            EffectName::StateSet.as_str(),
            json!({"key": key.as_str(), "value": value}),
        )
    });
    effect_fn!(m, "set", move |key: ImmutableString,
                               value: Dynamic,
                               ttl: Dynamic| {
        let value = arg(&value, &sizes, "value")?;
        let ttl = ttl_seconds(&ttl)?;
        perform(
            EffectName::StateSet.as_str(),
            json!({"key": key.as_str(), "value": value, "ttl": ttl}),
        )
    });
    module
}

fn now() -> HostResult {
    let effects = current_effects().ok_or_else(|| not_in_run("now"))?;
    move_off_runtime()?;
    match effects.now() {
        Ok(now) => Ok(now.to_rfc3339().into()),
        Err(_) if effects.effects_exhausted() => Err(end_run(EFFECTS_TOKEN)),
        Err(error) => Err(runtime(error.to_string())),
    }
}

/// Performs one effect for the current run, throwing its error into the script.
fn perform(effect: &str, args: Value) -> HostResult {
    let effects = current_effects().ok_or_else(|| not_in_run(effect))?;
    move_off_runtime()?;
    let result = effects.call(effect, args).map(Some);
    script_answer(&effects, effect, result)
}

/// As [`perform`], but when this call ends the script, the script ends
/// without waiting for the answer (see [`super::last_effect`]); on a
/// runtime thread, such a call that starts without a wait is made there.
fn perform_maybe_last(context: &NativeCallContext, effect: &str, args: Value) -> HostResult {
    let effects = current_effects().ok_or_else(|| not_in_run(effect))?;
    let result =
        if is_last_effect(context) && (!runs_inline() || effects.begins_without_blocking(effect)) {
            stay_inline();
            effects.call_last(effect, args)
        } else {
            move_off_runtime()?;
            effects.call(effect, args).map(Some)
        };
    script_answer(&effects, effect, result)
}

/// Ends a run executing on a runtime thread before it waits or leaves a
/// trace, to run again from its start on a script thread ([`super::inline`]).
fn move_off_runtime() -> Result<(), Box<EvalAltResult>> {
    if runs_inline() {
        return Err(end_run(MOVED_TOKEN));
    }
    Ok(())
}

/// What the script gets for an effect call: its answer (unit when left to
/// the run), or its error thrown.
fn script_answer(
    effects: &RunEffects,
    effect: &str,
    result: Result<Option<Value>, EffectError>,
) -> HostResult {
    match result {
        Ok(None) => Ok(Dynamic::UNIT),
        Ok(Some(answer)) => {
            from_json(&answer).map_err(|message| runtime(format!("{effect}: {message}")))
        }
        Err(_) if effects.effects_exhausted() => Err(end_run(EFFECTS_TOKEN)),
        Err(error) => {
            let thrown = effect_error_value(&error);
            note_thrown(error);
            Err(Box::new(EvalAltResult::ErrorRuntime(
                thrown,
                rhai::Position::NONE,
            )))
        }
    }
}

/// The map a script catches for an effect error.
pub(crate) fn effect_error_value(error: &EffectError) -> Dynamic {
    let mut map = Map::new();
    map.insert("effect".into(), error.effect.clone().into());
    let kind = serde_json::to_value(error.kind)
        .ok()
        .and_then(|kind| kind.as_str().map(str::to_string))
        .unwrap_or_default();
    map.insert("kind".into(), kind.into());
    map.insert("message".into(), error.message.clone().into());
    let code = error
        .code
        .as_ref()
        .and_then(|code| from_json(code).ok())
        .unwrap_or(Dynamic::UNIT);
    map.insert("code".into(), code);
    let status = error
        .status
        .map_or(Dynamic::UNIT, |status| Dynamic::from_int(status.into()));
    map.insert("status".into(), status);
    Dynamic::from_map(map)
}

/// Ends the run at once, and at every operation after this one.
fn end_run(token: &'static str) -> Box<EvalAltResult> {
    terminate(token);
    EvalAltResult::ErrorTerminated(token.into(), rhai::Position::NONE).into()
}

/// An argument as JSON, once it is known to be within the limits.
fn arg(value: &Dynamic, sizes: &SizeLimits, what: &str) -> Result<Value, Box<EvalAltResult>> {
    check_size(value, sizes, what)?;
    to_json(value, sizes.depth, what).map_err(runtime)
}

/// Refuses a value that breaks a size limit, before it is copied out.
fn check_size(value: &Dynamic, sizes: &SizeLimits, what: &str) -> Result<(), Box<EvalAltResult>> {
    match oversized(value, sizes) {
        None => Ok(()),
        Some("Depth of value") => Err(runtime(format!(
            "{what} is nested too deeply (max_value_depth = {})",
            sizes.depth
        ))),
        Some(broken) => {
            Err(EvalAltResult::ErrorDataTooLarge(broken.into(), rhai::Position::NONE).into())
        }
    }
}

fn ttl_seconds(ttl: &Dynamic) -> Result<u64, Box<EvalAltResult>> {
    if let Ok(seconds) = ttl.as_int() {
        return u64::try_from(seconds)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| runtime(format!("ttl must be positive, got {seconds}")));
    }
    let text = ttl.to_string();
    parse_seconds_or_duration(&text)
        .map(|d| d.as_secs().max(1))
        .ok_or_else(|| {
            runtime(format!(
                "invalid ttl `{text}`: use seconds or a duration such as \"5m\""
            ))
        })
}

/// A value as log or message text: strings as they are, others printed.
fn text_of(value: &Dynamic, sizes: &SizeLimits) -> Result<String, Box<EvalAltResult>> {
    if let Some(text) = value.read_lock::<ImmutableString>() {
        return Ok(text.to_string());
    }
    if exceeds_depth(value, 32) {
        return Ok("[a value nested too deeply to print]".to_string());
    }
    check_size(value, sizes, "the text")?;
    Ok(value.to_string())
}

/// Writes a log line of the script: held while its run may still move off
/// this runtime thread ([`hold_log`]), or moving it when it holds enough.
fn write_log(level: &'static str, mut message: String) -> Result<(), Box<EvalAltResult>> {
    if let Some((cut, _)) = message.char_indices().nth(MAX_LOG_CHARS) {
        message.truncate(cut);
        message.push_str("...");
    }
    let message = match hold_log(level, message) {
        Ok(()) => return Ok(()),
        Err(message) => message,
    };
    move_off_runtime()?;
    match current_effects() {
        Some(effects) => effects.log(level, message),
        None => tracing::debug!(level, "script log outside a run: {message}"),
    }
    Ok(())
}

fn not_in_run(effect: &str) -> Box<EvalAltResult> {
    runtime(format!(
        "{effect} is only available while a rule runs, not while scripts load"
    ))
}

fn runtime(message: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        message.into(),
        rhai::Position::NONE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::EffectErrorKind;

    #[test]
    fn effect_errors_become_maps() {
        let mut error = EffectError::new("zoom.get", EffectErrorKind::Permanent, "not found");
        error.status = Some(404);
        error.code = Some(json!(3001));
        let value = effect_error_value(&error);
        let map = value.read_lock::<Map>().unwrap();
        assert_eq!(map["effect"].to_string(), "zoom.get");
        assert_eq!(map["kind"].to_string(), "permanent");
        assert_eq!(map["message"].to_string(), "not found");
        assert_eq!(map["status"].as_int().unwrap(), 404);
        assert_eq!(map["code"].as_int().unwrap(), 3001);
    }

    #[test]
    fn reads_ttls_as_seconds_or_durations() {
        assert_eq!(ttl_seconds(&Dynamic::from_int(30)).unwrap(), 30);
        assert_eq!(ttl_seconds(&Dynamic::from("5m")).unwrap(), 300);
        assert!(ttl_seconds(&Dynamic::from_int(0)).is_err());
        assert!(ttl_seconds(&Dynamic::from("soon")).is_err());
    }

    #[test]
    fn host_functions_refuse_to_run_outside_a_run() {
        let mut engine = Engine::new();
        let sizes = SizeLimits {
            array: 100,
            map: 100,
            string: 100,
            key: 10,
            depth: 8,
        };
        register_script_functions(&mut engine, sizes);
        let error = engine.run(r##"slack::post("#a", "hi")"##).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("slack.post is only available while a rule runs"),
            "{error}"
        );
        let uuid: String = engine.eval(r#"zoom::uuid("/ab==")"#).unwrap();
        assert_eq!(uuid, "%252Fab%253D%253D");
    }
}

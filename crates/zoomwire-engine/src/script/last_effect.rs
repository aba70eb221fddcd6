//! A script that ends with an effect (`slack::post(...)` as its last
//! statement, as most rules do) has nothing left to do with its answer, so
//! its thread need not wait for it: the effect is started, the script ends,
//! and the run's task on the runtime waits for the answer and records it
//! ([`RunEffects::call_last`], [`finish`]). The thread is free for the next
//! run meanwhile, and a run costs one sleep and one wake-up of a script
//! thread fewer (the wait for the answer and the wake-up with it).
//!
//! Nothing the script can see changes: the call is the last statement, so
//! nothing runs after it; its answer is what the script's value would have
//! been (a Rhai script's value is its last statement's); its error fails
//! the run as the same uncaught error would have. Only effects whose
//! answers the engine builds, small and of a known shape, are left to the
//! run ([`LEFT_TO_THE_RUN`]): a large answer (an HTTP body, a Zoom listing)
//! must count against the script thread's memory budget, as it does when
//! the script gets it.
//!
//! The call is found by its position: the last top-level statement's
//! ([`last_effect`], at compile time), matched by the host function against
//! the position Rhai gives it, at the top level of the script itself (not
//! in a function or a module, where positions are of other text).

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use rhai::{AST, Dynamic, Expr, FnCallExpr, NativeCallContext, Position, Stmt};

use super::error::ScriptError;
use super::value::from_json;
use super::{Sandbox, panic_text};
use crate::effects::gateway::RunEffects;

/// The effects a script's last statement leaves to its run, by module and
/// function: their answers are small maps the engine builds.
const LEFT_TO_THE_RUN: [(&str, &str); 3] =
    [("slack", "post"), ("slack", "webhook"), ("email", "send")];

/// The position of the script's last statement when it is a call of an
/// effect [`LEFT_TO_THE_RUN`].
pub fn last_effect(ast: &AST) -> Option<Position> {
    let (call, position) = match ast.statements().last()? {
        Stmt::FnCall(call, position) => (call.as_ref(), *position),
        Stmt::Expr(expr) => match expr.as_ref() {
            Expr::FnCall(call, position) => (call.as_ref(), *position),
            _ => return None,
        },
        _ => return None,
    };
    is_left_to_the_run(call).then_some(position)
}

fn is_left_to_the_run(call: &FnCallExpr) -> bool {
    let [module] = call.namespace.path.as_slice() else {
        return false;
    };
    LEFT_TO_THE_RUN
        .iter()
        .any(|(name, function)| module.name == *name && call.name == *function)
}

/// Whether the host function called in `context` is the call at `last`:
/// at the top level of the script itself (where a native function's call
/// is at level 1: Rhai counts the call itself).
pub(crate) fn is_the_call(context: &NativeCallContext, last: Option<Position>) -> bool {
    last == Some(context.call_position())
        && context.call_level() == 1
        && context.call_source().is_none()
}

/// The script's result once the effect its last statement left running (if
/// it did) is over and recorded: that effect's answer, converted and
/// bounded as the script's own value is, or its error. A script that
/// failed after starting it fails as it did; the effect is recorded all
/// the same. Call it on the runtime once the script thread answered (or the
/// run stopped waiting for it).
pub async fn finish(
    result: Result<Dynamic, ScriptError>,
    effects: &RunEffects,
    sandbox: &Sandbox,
) -> Result<Dynamic, ScriptError> {
    let last = match AssertUnwindSafe(effects.finish_last()).catch_unwind().await {
        Ok(None) => return result,
        Ok(Some(last)) => last,
        // As a panic on the script thread fails its run (see `pool.rs`).
        Err(panic) => {
            return Err(ScriptError::runtime(format!(
                "internal error: the script run panicked: {}",
                panic_text(panic.as_ref())
            )));
        }
    };
    // The script's own value is the unit the call gave it.
    let _unit = result?;
    match last {
        Ok(answer) => from_json(&answer)
            .map_err(ScriptError::runtime)
            .and_then(|value| sandbox.check_result(value)),
        Err(error) => Err(ScriptError::Effect(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_of(script: &str) -> Option<Position> {
        let sandbox = Sandbox::new(Default::default(), super::super::ScriptModules::empty());
        last_effect(&sandbox.compile_script(script).unwrap())
    }

    #[test]
    fn finds_a_post_or_a_mail_that_ends_the_script() {
        assert_eq!(
            last_of("let t = \"hi\";\nslack::post(\"#a\", t);"),
            Some(Position::new(2, 8))
        );
        assert_eq!(
            last_of("slack::post(#{channel: \"#a\", text: \"x\"})"),
            Some(Position::new(1, 8))
        );
        // Rhai's optimizer makes a last `return x` the statement `x`.
        assert!(last_of("return slack::post(\"#a\", \"x\");").is_some());
        assert!(last_of("slack::webhook(\"ops\", \"x\");").is_some());
        assert!(last_of("email::send(#{to: \"a@b.c\", subject: \"s\", text: \"t\"});").is_some());
    }

    #[test]
    fn leaves_every_other_script_to_wait_for_its_answers() {
        for script in [
            // Something runs after it, or uses its answer.
            "slack::post(\"#a\", \"x\");\nlog::info(\"done\");",
            "let r = slack::post(\"#a\", \"x\");",
            "slack::post(\"#a\", \"x\").ts",
            // Not the top level.
            "if event.payload.n > 1 { slack::post(\"#a\", \"x\") }",
            "fn tell() { slack::post(\"#a\", \"x\") }\ntell()",
            "try { slack::post(\"#a\", \"x\") } catch (e) { log::warn(e.message) }",
            // Answers the script's thread must hold (and count) itself.
            "http::request(#{url: \"https://example.com\"})",
            "zoom::get(\"/users/me\")",
            "log::info(\"x\")",
            "",
        ] {
            assert_eq!(last_of(script), None, "{script}");
        }
    }
}

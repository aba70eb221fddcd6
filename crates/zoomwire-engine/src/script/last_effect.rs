//! A script that ends with an effect (`slack::post(...)` as its last
//! statement, as most rules do) has nothing left to do with its answer, so
//! its thread need not wait for it: the effect is started, the script ends,
//! and the run's task on the runtime waits for the answer and records it
//! ([`RunEffects::call_last`], [`finish`]). The thread is free for the next
//! run meanwhile, and a run costs one sleep and one wake-up of a script
//! thread fewer (the wait for the answer and the wake-up with it).
//!
//! Nothing the script can see changes: the call ends the script, so
//! nothing runs after it; its answer is what the script's value would have
//! been (a Rhai script's value is its last statement's, an `if`'s that of
//! the branch taken); its error fails the run as the same uncaught error
//! would have. Only effects whose
//! answers the engine builds, small and of a known shape, are left to the
//! run ([`LEFT_TO_THE_RUN`]): a large answer (an HTTP body, a Zoom listing)
//! must count against the script thread's memory budget, as it does when
//! the script gets it.
//!
//! The call is found by its position: the last top-level statement's, or
//! the last statement's of a branch of a last `if` ([`last_effects`], at
//! compile time), matched by the host function against the position Rhai
//! gives it, in the script itself (not in a function or a module, where
//! positions are of other text).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

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

/// Where the calls the script may end with are, for [`is_the_call`].
pub type LastEffects = Arc<[Position]>;

/// The positions of the calls of effects [`LEFT_TO_THE_RUN`] that end the
/// script: its last statement, or the last statement of either branch of
/// a last `if` (or of a last block), at any depth. Only one of them runs,
/// and nothing after it.
pub fn last_effects(ast: &AST) -> LastEffects {
    let mut found = Vec::new();
    ends_of(ast.statements(), &mut found);
    found.into()
}

fn ends_of(statements: &[Stmt], found: &mut Vec<Position>) {
    match statements.last() {
        Some(Stmt::FnCall(call, position)) => found.extend(left_to_the_run(call, *position)),
        Some(Stmt::Expr(expr)) => {
            if let Expr::FnCall(call, position) = expr.as_ref() {
                found.extend(left_to_the_run(call, *position));
            }
        }
        Some(Stmt::If(flow, _)) => {
            ends_of(flow.body.statements(), found);
            ends_of(flow.branch.statements(), found);
        }
        Some(Stmt::Block(block)) => ends_of(block.statements(), found),
        _ => {}
    }
}

fn left_to_the_run(call: &FnCallExpr, position: Position) -> Option<Position> {
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

/// Whether the host function called in `context` is one of the calls at
/// `last`: in the script itself, outside any function (where a native
/// function's call is at level 1: Rhai counts the call itself).
pub(crate) fn is_the_call(context: &NativeCallContext, last: &[Position]) -> bool {
    context.call_level() == 1
        && context.call_source().is_none()
        && last.contains(&context.call_position())
}

/// The script's result once the effect it ended with left running (if it
/// did) is over and recorded: that effect's answer, converted and
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
        let found = ends_of_script(script);
        assert!(found.len() <= 1, "{found:?}");
        found.first().copied()
    }

    fn ends_of_script(script: &str) -> Vec<Position> {
        let sandbox = Sandbox::new(Default::default(), super::super::ScriptModules::empty());
        last_effects(&sandbox.compile_script(script).unwrap()).to_vec()
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
    fn finds_the_posts_that_end_a_last_if_in_each_branch() {
        let script = "let n = event.payload.n;\n\
            if n > 10 {\n  slack::post(\"#a\", \"big\")\n} \
            else if n > 1 {\n  log::info(\"mid\");\n  { email::send(#{to: \"a@b.c\"}) }\n} \
            else {\n  log::info(\"small\")\n}";
        assert_eq!(
            ends_of_script(script),
            [Position::new(3, 10), Position::new(6, 12)]
        );
    }

    #[test]
    fn leaves_every_other_script_to_wait_for_its_answers() {
        for script in [
            // Something runs after it, or uses its answer.
            "slack::post(\"#a\", \"x\");\nlog::info(\"done\");",
            "let r = slack::post(\"#a\", \"x\");",
            "slack::post(\"#a\", \"x\").ts",
            // Not the top level.
            "if event.payload.n > 1 { slack::post(\"#a\", \"x\") }\nlog::info(\"x\")",
            "while event.payload.n > 1 { slack::post(\"#a\", \"x\"); break; }",
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

//! Guards on the standard library functions that can build far more than
//! they are given, in one native call that no `on_progress` interrupts.
//!
//! The memory budget stops a run at its next operation, so what one native
//! call allocates must be bounded by itself. Most are, by Rhai's size limits
//! (`pad`, `blob`, `+`) or by their input. These are not:
//!
//! - printing an array or map (`to_string`, `to_debug`, `print`, `debug`,
//!   `${...}`, `s + a`) and `to_json`: Rhai checks a value's size only after
//!   its text is built, and the text can be far larger than what is held. A
//!   string is shared, not copied, when it is put in a value, and Rhai's own
//!   size check counts neither map keys nor the arguments curried into a
//!   function pointer: `Fn("f").curry(s)` a thousand times holds `s` once
//!   and prints it a thousand times in `to_json`;
//! - `replace` with a longer substitute (`s.replace("", t)` inserts `t`
//!   between every two characters);
//! - `split`, `split_rev` and `to_chars`: an item per piece, tens of bytes
//!   each, for a piece of one byte.
//!
//! Each guard is registered on the engine under the same name and types as
//! the function it replaces (registered functions are found before the
//! standard packages) and checks, before allocating, that the result stays
//! within Rhai's limits. The printers cannot fail, and must not leave the
//! value as it was: where Rhai prints a value for `${...}` or `+`, it checks
//! the value's size after the printer returns and, if that check or the
//! printer fails, prints the value with its own `Display`, which would build
//! the very string refused. So a refused value is emptied (the run ends at
//! its next operation, when nothing can read it any more), and the printer
//! returns a short placeholder; the others fail with Rhai's own "data too
//! large" error.

use std::fmt::Write as _;

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FuncRegistration, INT, ImmutableString, Map,
    NativeCallContext, Position,
};

use super::run::{terminate, too_large_token};
use super::value::{SizeLimits, oversized_array, oversized_map};

type GuardResult<T> = Result<T, Box<EvalAltResult>>;

/// Registers a pure function: it does not change its `&mut` argument, so it
/// may be called on a constant (`event.payload.object.topic.split(" ")`).
macro_rules! pure_fn {
    ($engine:expr, $name:expr, $func:expr) => {
        FuncRegistration::new($name)
            .with_purity(true)
            .register_into_engine($engine, $func)
    };
}

/// The names under which Rhai prints arrays and maps.
const PRINTERS: [&str; 4] = ["print", "to_string", "debug", "to_debug"];
/// What a refused array or map prints as, before the run ends.
const REFUSED: &str = "[value too large to print]";

/// Registers every guard on `engine`. Array, map and string sizes are read
/// from the engine at call time; `max_key_size` and `max_value_depth` are
/// not Rhai's, so they are given.
pub(crate) fn register_guards(engine: &mut Engine, max_key_size: usize, max_value_depth: usize) {
    let (key, depth) = (max_key_size, max_value_depth);
    for name in PRINTERS {
        pure_fn!(
            engine,
            name,
            move |ctx: NativeCallContext, array: &mut Array| {
                print_array(&ctx, array, key, depth)
            }
        );
        pure_fn!(
            engine,
            name,
            move |ctx: NativeCallContext, map: &mut Map| { print_map(&ctx, map, key, depth) }
        );
    }
    pure_fn!(
        engine,
        "to_json",
        move |ctx: NativeCallContext, map: &mut Map| { map_to_json(&ctx, map, key, depth) }
    );
    register_replace(engine);
    register_to_chars(engine);
    register_splits(engine);
}

fn size_limits(engine: &Engine, key: usize, depth: usize) -> SizeLimits {
    SizeLimits {
        array: engine.max_array_size(),
        map: engine.max_map_size(),
        string: engine.max_string_size(),
        key,
        depth,
    }
}

/// `[a, b]`, each item printed with `to_debug`, as Rhai prints arrays.
fn print_array(ctx: &NativeCallContext, array: &mut Array, key: usize, depth: usize) -> String {
    if let Some(broken) = oversized_array(array, &size_limits(ctx.engine(), key, depth)) {
        array.clear();
        return refuse(broken);
    }
    let mut text = String::from("[");
    let last = array.len().saturating_sub(1);
    for (index, item) in array.iter_mut().enumerate() {
        text.push_str(&print_item(ctx, item));
        if index < last {
            text.push_str(", ");
        }
    }
    text.push(']');
    text
}

/// `#{"a": 1}`, each value printed with `to_debug`, as Rhai prints maps.
fn print_map(ctx: &NativeCallContext, map: &mut Map, key: usize, depth: usize) -> String {
    if let Some(broken) = oversized_map(map, &size_limits(ctx.engine(), key, depth)) {
        map.clear();
        return refuse(broken);
    }
    let mut text = String::from("#{");
    let last = map.len().saturating_sub(1);
    for (index, (name, value)) in map.iter_mut().enumerate() {
        let separator = if index < last { ", " } else { "" };
        // Writing to a String cannot fail.
        let _ = write!(text, "{name:?}: {}{separator}", print_item(ctx, value));
    }
    text.push('}');
    text
}

/// An item printed the way Rhai's own printers print it.
fn print_item(ctx: &NativeCallContext, item: &mut Dynamic) -> String {
    match ctx.call_native_fn_raw(rhai::FUNC_TO_DEBUG, true, &mut [item]) {
        Ok(text) if text.is_string() => text.to_string(),
        Ok(other) => ctx.engine().map_type_name(other.type_name()).to_string(),
        Err(_) => format!("{item:?}"),
    }
}

fn refuse(broken: &str) -> String {
    terminate(too_large_token(broken));
    REFUSED.to_string()
}

fn map_to_json(
    ctx: &NativeCallContext,
    map: &mut Map,
    key: usize,
    depth: usize,
) -> GuardResult<String> {
    if let Some(broken) = oversized_map(map, &size_limits(ctx.engine(), key, depth)) {
        return Err(too_large(broken));
    }
    Ok(rhai::format_map_as_json(map))
}

fn too_large(what: &str) -> Box<EvalAltResult> {
    EvalAltResult::ErrorDataTooLarge(what.to_string(), Position::NONE).into()
}

/// `replace` whose substitute is longer than what it replaces.
fn register_replace(engine: &mut Engine) {
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext,
         text: &mut ImmutableString,
         find: ImmutableString,
         substitute: ImmutableString|
         -> GuardResult<()> { replace(&ctx, text, &find, &substitute) },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext,
         text: &mut ImmutableString,
         find: char,
         substitute: ImmutableString|
         -> GuardResult<()> { replace(&ctx, text, &find.to_string(), &substitute) },
    );
}

fn replace(
    ctx: &NativeCallContext,
    text: &mut ImmutableString,
    find: &str,
    substitute: &str,
) -> GuardResult<()> {
    if text.is_empty() {
        return Ok(());
    }
    if substitute.len() > find.len() {
        let matches = if find.is_empty() {
            text.chars().count() + 1
        } else {
            text.matches(find).count()
        };
        let grown = matches.saturating_mul(substitute.len() - find.len());
        if text.len().saturating_add(grown) > ctx.engine().max_string_size() {
            return Err(too_large("Length of string"));
        }
    }
    *text = text.replace(find, substitute).into();
    Ok(())
}

/// `to_chars`, counting the characters before making them.
fn register_to_chars(engine: &mut Engine) {
    pure_fn!(engine, "to_chars", |ctx: NativeCallContext,
                                  text: &mut ImmutableString|
     -> GuardResult<Array> {
        if text.chars().count() > ctx.engine().max_array_size() {
            return Err(too_large("Size of array/BLOB"));
        }
        Ok(text.chars().map(Dynamic::from).collect())
    });
}

/// The pieces `make` gives, refused before they are made when there are
/// more than `max_array_size`.
fn pieces<'a, I: Iterator<Item = &'a str>>(
    ctx: &NativeCallContext,
    make: impl Fn() -> I,
) -> GuardResult<Array> {
    if make().count() > ctx.engine().max_array_size() {
        return Err(too_large("Size of array/BLOB"));
    }
    Ok(make().map(Into::<Dynamic>::into).collect())
}

/// Rhai's answer when there is nothing to split: the string itself.
fn unsplit(text: &ImmutableString, delimiter: &str) -> bool {
    text.is_empty() || (!delimiter.is_empty() && !text.contains(delimiter))
}

fn whole(text: &ImmutableString) -> GuardResult<Array> {
    Ok(vec![text.clone().into()])
}

fn segments(n: INT) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `split` and `split_rev`, counting the pieces before making them; the same
/// answers as Rhai's in every other respect.
fn register_splits(engine: &mut Engine) {
    type Text<'a> = &'a mut ImmutableString;
    pure_fn!(engine, "split", |ctx: NativeCallContext, text: Text| {
        if text.is_empty() {
            return whole(text);
        }
        pieces(&ctx, || text.split_whitespace())
    });
    pure_fn!(
        engine,
        "split",
        |ctx: NativeCallContext, text: Text, by: ImmutableString| {
            if unsplit(text, by.as_str()) {
                return whole(text);
            }
            pieces(&ctx, || text.split(by.as_str()))
        }
    );
    pure_fn!(engine, "split", |ctx: NativeCallContext,
                               text: Text,
                               by: ImmutableString,
                               n: INT| {
        if n <= 1 || unsplit(text, by.as_str()) {
            return whole(text);
        }
        pieces(&ctx, || text.splitn(segments(n), by.as_str()))
    });
    pure_fn!(engine, "split", |ctx: NativeCallContext,
                               text: Text,
                               by: char| {
        if unsplit(text, &by.to_string()) {
            return whole(text);
        }
        pieces(&ctx, || text.split(by))
    });
    pure_fn!(engine, "split", |ctx: NativeCallContext,
                               text: Text,
                               by: char,
                               n: INT| {
        if n <= 1 || unsplit(text, &by.to_string()) {
            return whole(text);
        }
        pieces(&ctx, || text.splitn(segments(n), by))
    });
    pure_fn!(
        engine,
        "split_rev",
        |ctx: NativeCallContext, text: Text, by: ImmutableString| {
            if unsplit(text, by.as_str()) {
                return whole(text);
            }
            pieces(&ctx, || text.rsplit(by.as_str()))
        }
    );
    pure_fn!(
        engine,
        "split_rev",
        |ctx: NativeCallContext, text: Text, by: ImmutableString, n: INT| {
            if n <= 1 || unsplit(text, by.as_str()) {
                return whole(text);
            }
            pieces(&ctx, || text.rsplitn(segments(n), by.as_str()))
        }
    );
    pure_fn!(
        engine,
        "split_rev",
        |ctx: NativeCallContext, text: Text, by: char| {
            if unsplit(text, &by.to_string()) {
                return whole(text);
            }
            pieces(&ctx, || text.rsplit(by))
        }
    );
    pure_fn!(
        engine,
        "split_rev",
        |ctx: NativeCallContext, text: Text, by: char, n: INT| {
            if n <= 1 || unsplit(text, &by.to_string()) {
                return whole(text);
            }
            pieces(&ctx, || text.rsplitn(segments(n), by))
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::engine::{EngineKind, build_engine};
    use crate::script::{SandboxLimits, ScriptModules};

    fn guarded() -> Engine {
        build_engine(
            &SandboxLimits::default(),
            &ScriptModules::empty(),
            EngineKind::Script,
        )
    }

    /// The guards give the answers Rhai's own functions give.
    #[test]
    fn answers_as_the_standard_functions_do() {
        let (guarded, plain) = (guarded(), Engine::new());
        let sources = [
            r#"[1, "a\"b", 'c', 2.5, (), true, [3, [4]], #{x: 1}].to_string()"#,
            r#"#{"b c": [1, 2], a: "x\ny", d: #{}}.to_debug()"#,
            r#"let a = [1, #{k: "v"}]; `${a} and ${#{z: a}}`"#,
            r#"let s = "n: "; s += [1, 2]; s + #{a: 1} + [3]"#,
            r#"#{a: [1, "x"], b: (), c: #{d: 2.0}}.to_json()"#,
            r#"print([1, 2]); debug(#{a: 1}); [[], #{}].to_debug()"#,
            r#"[blob(3, 1), Fn("f")].to_string()"#,
            r#"let s = "a,b,,c"; [s.split(","), s.split(",", 2), s.split(','), s.split(',', 3)]"#,
            r#"let s = "a,b,,c"; [s.split_rev(","), s.split_rev(",", 2), s.split_rev(','), s.split_rev(',', 2)]"#,
            r#"["a b  c".split(), "".split(), "".split(","), "abc".split(""), "abc".split("x"), "abc".split("b", 1)]"#,
            r#"["héllo".to_chars(), "".to_chars()]"#,
            r#"let s = "a-b-c"; s.replace("-", "--"); let t = "a-b"; t.replace('-', "=="); let u = ""; u.replace("", "x"); let v = "ab"; v.replace("", "."); [s, t, u, v]"#,
        ];
        for source in sources {
            let mine = guarded.eval::<Dynamic>(source).unwrap().to_string();
            let theirs = plain.eval::<Dynamic>(source).unwrap().to_string();
            assert_eq!(mine, theirs, "{source}");
        }
    }

    #[test]
    fn guards_work_on_constants() {
        let engine = guarded();
        let mut scope = rhai::Scope::new();
        scope.push_constant("c", "a b".to_string());
        scope.push_constant("m", Map::from([("k".into(), Dynamic::from(1_i64))]));
        let source = r#"[c.split(" "), c.split(), c.to_chars(), m.to_json(), m.to_string()]"#;
        let value: Dynamic = engine.eval_with_scope(&mut scope, source).unwrap();
        assert_eq!(
            value.to_string(),
            r##"[["a", "b"], ["a", "b"], ['a', ' ', 'b'], "{\"k\":1}", "#{\"k\": 1}"]"##
        );
    }

    /// Runs `source` with `m` (a map holding one megabyte string under 1,000
    /// keys: one copy held, a thousand printed) and `f` (a function pointer
    /// with the string curried 1,000 times: Rhai counts neither), under an
    /// 8 MiB budget. Returns the error and whether the budget was passed.
    fn refused(source: &str) -> (String, bool) {
        let engine = build_engine(
            &SandboxLimits::default(),
            &ScriptModules::empty(),
            EngineKind::Script,
        );
        let big = ImmutableString::from("y".repeat(1_000_000));
        let mut scope = rhai::Scope::new();
        let shared: Map = (0..1000)
            .map(|i| (i.to_string().into(), Dynamic::from(big.clone())))
            .collect();
        scope.push_constant("m", shared);
        let mut curried = rhai::FnPtr::new("f").unwrap();
        for _ in 0..1000 {
            curried.add_curry(Dynamic::from(big.clone()));
        }
        scope.push_constant("f", curried);
        let _run = crate::script::run::enter_run(crate::script::run::ActiveRun::new(
            std::time::Instant::now() + std::time::Duration::from_secs(10),
            Default::default(),
            Default::default(),
            None,
        ));
        // Compiled as the sandbox compiles: the names exist, their values do
        // not, so the optimizer cannot print them ahead of the run.
        let mut names = rhai::Scope::new();
        names.push_dynamic("m", Dynamic::UNIT);
        names.push_dynamic("f", Dynamic::UNIT);
        let ast = engine.compile_with_scope(&names, source).unwrap();
        let budget = crate::script::memory::enter_budget(8 << 20);
        let outcome = engine.run_ast_with_scope(&mut scope, &ast);
        let exceeded = crate::script::memory::budget_exceeded();

        drop(budget);
        let outcome = crate::script::ended_early(
            outcome.map(|()| Dynamic::UNIT),
            crate::script::run::run_terminated(),
        );
        let evaluation = crate::script::error::Evaluation::script(
            std::time::Duration::from_secs(10),
            &SandboxLimits::default(),
        );
        match outcome {
            Ok(_) => panic!("{source} should fail"),
            Err(error) => {
                let error = crate::script::error::script_error(&engine, error, evaluation, &[]);
                (error.to_string(), exceeded)
            }
        }
    }

    #[test]
    fn refuse_before_building_more_than_the_limits_allow() {
        for print in [
            "m.to_string()",
            "`${m}`",
            r#""" + m"#,
            "let t = \"\"; t += [m];",
            "print(m)",
            "m.to_json()",
            "#{f: f}.to_json()",
        ] {
            let (error, exceeded) = refused(&format!("{print}; 1"));
            assert_eq!(
                error, "string too large (max_string_size = 1048576)",
                "{print}"
            );
            assert!(!exceeded, "{print} built its text before refusing it");
        }
        // 10,000 characters, each followed by 1,000 bytes: 10 MB.
        let replace = r#"let s = "y"; s.pad(10000, "y"); let t = "z"; t.pad(1000, "z");"#;
        for call in [r#"s.replace("", t)"#, "s.replace('y', t)"] {
            let (error, exceeded) = refused(&format!("{replace} {call}; s"));
            assert_eq!(
                error, "string too large (max_string_size = 1048576)",
                "{call}"
            );
            assert!(!exceeded, "{call} built its string before refusing it");
        }
        // A megabyte of "a a a ...": half a million to a million array items if made.
        let pieces = r#"let s = "a "; for i in 0..19 { s += s; }"#;
        for split in [
            r#"s.split("")"#,
            "s.split(' ')",
            r#"s.split_rev(" ")"#,
            "s.to_chars()",
            "s.split()",
        ] {
            let (error, exceeded) = refused(&format!("{pieces} {split}"));
            assert_eq!(error, "array too large (max_array_size = 50000)", "{split}");
            assert!(!exceeded, "{split} made its pieces before refusing them");
        }
    }
}

//! Guards on the standard library functions that can build far more than
//! they are given, in one native call that no `on_progress` interrupts.
//!
//! The memory budget stops a run at its next operation, so what one native
//! call allocates must be bounded by itself. Most are, by Rhai's size limits
//! (`pad`, `blob`, `+`) or by their input. These are not:
//!
//! - printing an array or map (`to_string`, `to_debug`, `print`, `debug`,
//!   `${...}`, `s + a`) and `to_json`: a string is shared, not copied, when
//!   it is put in an array, so `[s, s, ...]` holds one copy of `s` but prints
//!   as many as it has items. Rhai checks a container's size when a function
//!   returns it, not when an item is assigned into it (`a[i] = s`), so such
//!   an array can be built between two checks;
//! - `replace` with a longer substitute (`s.replace("", t)` inserts `t`
//!   between every two characters);
//! - `split`, `split_rev` and `to_chars`: an item per piece, tens of bytes
//!   each, for a piece of one byte.
//!
//! Each guard is registered on the engine under the same name and types as
//! the function it replaces (registered functions are found before the
//! standard packages) and checks, before allocating, that the result stays
//! within Rhai's limits. The printers cannot fail (Rhai prints a value whose
//! printer failed with its own `Display`, which would build the very string
//! refused), so they return a short placeholder and end the run at its next
//! operation; the others fail with Rhai's own "data too large" error.

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

    fn refused(source: &str) -> String {
        let limits = SandboxLimits {
            max_string_size: 1000,
            max_array_size: 100,
            ..SandboxLimits::default()
        };
        let engine = build_engine(&limits, &ScriptModules::empty(), EngineKind::Script);
        crate::script::run::reset_condition_clock();
        let _run = crate::script::run::enter_run(crate::script::run::ActiveRun::new(
            std::time::Instant::now() + std::time::Duration::from_secs(10),
            Default::default(),
            Default::default(),
            None,
        ));
        match engine.run(source) {
            Ok(()) => panic!("{source} should fail"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn refuse_before_building_more_than_the_limits_allow() {
        // 100 references to one 900-byte string: 90,000 bytes if printed.
        let shared = r#"let s = "x"; s.pad(900, "x"); let a = []; a.pad(100, 0); for i in 0..100 { a[i] = s; }"#;
        for print in [
            "a.to_string()",
            "`${a}`",
            r#""" + a"#,
            "let t = \"\"; t += a;",
            "#{a: a}.to_json()",
            "print(a)",
        ] {
            let error = refused(&format!("{shared} {print}; 1"));
            assert!(error.contains("Length of string"), "{print}: {error}");
        }
        let error = refused(r#"let s = "x"; s.pad(500, "x"); s.replace("", "yy"); s"#);
        assert!(error.contains("Length of string"), "{error}");
        let error = refused(r#"let s = "x"; s.pad(500, "x"); s.replace('x', "yyy"); s"#);
        assert!(error.contains("Length of string"), "{error}");
        for split in [
            "s.split(\"\")",
            "s.split(',')",
            "s.split_rev(\",\")",
            "s.to_chars()",
            "s.split()",
        ] {
            let source = format!(r#"let s = ""; for i in 0..300 {{ s += "a, "; }} {split}"#);
            let error = refused(&source);
            assert!(error.contains("Size of array"), "{split}: {error}");
        }
    }
}

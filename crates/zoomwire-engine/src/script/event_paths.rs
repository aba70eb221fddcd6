//! The parts of the event a script reads, found when it is compiled, so
//! that a run builds only those parts of the event's Rhai value.
//!
//! Building the whole body as Rhai maps and arrays is most of what a run
//! costs besides its effects, and most scripts read a few fields
//! (`event.payload.object.topic`). A script that only ever names `event` at
//! the head of a chain of property names (`event.a.b`, `event.a.b.len()`,
//! `event.a.b[0]`) sees exactly the same values in a copy of the body that
//! keeps, along each chain, the maps it walks through (with only the keys it
//! names) and the whole value at the end of it: every key it asks for is
//! there with the same value, every key it asks for that the body lacks is
//! missing from the copy too, and whatever it reads as a whole (the end of a
//! chain, the receiver of a method, the map it indexes) is whole. Any other
//! use of `event` (passed to a function, assigned, captured by a closure,
//! iterated, indexed at its root) keeps the whole body ([`EventPaths::Whole`]).
//!
//! The copy is read from the event's JSON text in one walk that skips what
//! no chain names ([`prune`]), and each value it keeps is made by the same
//! deserializer as the whole body, so its numbers, strings and nulls are the
//! same Rhai values.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use rhai::{AST, Dynamic, Expr, Stmt};
use rhai::{ASTNode, Map};
use serde::de::value::SeqAccessDeserializer;
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};

use crate::event::Event;

/// The name under which scripts read the event.
const EVENT: &str = "event";

/// What of the event a script reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPaths {
    /// All of it (or this whole value, inside [`EventPaths::Fields`]).
    Whole,
    /// Only these keys of a map, each read as given; a value that is not a
    /// map is kept whole.
    Fields(BTreeMap<String, EventPaths>),
}

impl EventPaths {
    /// What `ast` (a script with its functions) reads of `event`.
    pub fn of_script(ast: &AST) -> EventPaths {
        let mut paths = EventPaths::Fields(BTreeMap::new());
        ast.walk(&mut |path: &[ASTNode]| {
            let (expr, parents) = match path.split_last() {
                Some((ASTNode::Expr(expr), parents)) => (expr, parents),
                // What the walk does not look into: the value of a `break`,
                // and names exported or captured by a closure.
                Some((ASTNode::Stmt(stmt), _)) if hides_a_use(stmt) => {
                    paths = EventPaths::Whole;
                    return false;
                }
                _ => return true,
            };
            if !is_event_variable(expr) {
                return true;
            }
            match chain_from(expr, parents.last()) {
                Some(chain) => paths.add(&chain),
                None => paths = EventPaths::Whole,
            }
            !paths.is_whole()
        });
        paths
    }

    /// The event's body as a script reading these paths sees it: a copy of
    /// the whole value when it is made already or the script reads all of
    /// it, else a read-only value holding only what it reads.
    ///
    /// Never the event's own shared value: Rhai write-locks a shared value
    /// for every `event.x` a script reads, and a thread that finds it locked
    /// sleeps 10 ms before it tries again (its `locked_write` with the `sync`
    /// feature; after five tries the run panics), and the runs of one event
    /// start together on several script threads. A copy costs a clone of
    /// the body per run; a pruned body is the run's own already.
    pub fn body_of(&self, event: &Event) -> Dynamic {
        if self.is_whole() || event.body_is_built() {
            return own_copy(event.body());
        }
        match prune(&event.raw, self) {
            Some(body) => body.into_read_only().into_shared(),
            None => own_copy(event.body()),
        }
    }

    /// Whether the whole event is read.
    pub fn is_whole(&self) -> bool {
        matches!(self, EventPaths::Whole)
    }

    /// Adds a chain of keys whose last value is read whole.
    fn add(&mut self, chain: &[&str]) {
        let EventPaths::Fields(fields) = self else {
            return;
        };
        let Some((first, rest)) = chain.split_first() else {
            *self = EventPaths::Whole;
            return;
        };
        let child = fields
            .entry((*first).to_string())
            .or_insert_with(|| EventPaths::Fields(BTreeMap::new()));
        if rest.is_empty() {
            *child = EventPaths::Whole;
        } else {
            child.add(rest);
        }
    }
}

/// Whether `stmt` may use `event` where [`AST::walk`] does not look.
fn hides_a_use(stmt: &Stmt) -> bool {
    match stmt {
        Stmt::BreakLoop(value, ..) => value.is_some(),
        Stmt::Export(..) => true,
        Stmt::Share(names) => names.iter().any(|(name, _)| name.as_str() == EVENT),
        _ => false,
    }
}

/// Whether `expr` reads the variable `event`.
fn is_event_variable(expr: &Expr) -> bool {
    matches!(expr, Expr::Variable(x, ..) if x.1.as_str() == EVENT)
}

/// The keys read after `variable`, when its parent is a chain that starts
/// with it; `None` when it is used in any other way.
fn chain_from<'a>(variable: &Expr, parent: Option<&ASTNode<'a>>) -> Option<Vec<&'a str>> {
    let Some(ASTNode::Expr(Expr::Dot(chain, ..))) = parent else {
        return None;
    };
    if !std::ptr::eq(&chain.lhs, variable) {
        return None;
    }
    let mut keys = Vec::new();
    let mut next = &chain.rhs;
    loop {
        match next {
            // `.a` at the end: `a` read whole.
            Expr::Property(x, ..) => {
                keys.push(x.2.as_str());
                return Some(keys);
            }
            // `.a.more`: walk into `a`.
            Expr::Dot(x, ..) => match &x.lhs {
                Expr::Property(p, ..) => {
                    keys.push(p.2.as_str());
                    next = &x.rhs;
                }
                // `.a(..).more`: the value so far is the method's receiver.
                _ => return Some(keys),
            },
            // `.a[i]...`: `a` read whole.
            Expr::Index(x, ..) => {
                if let Expr::Property(p, ..) = &x.lhs {
                    keys.push(p.2.as_str());
                }
                return Some(keys);
            }
            // `.a(..)`: the value so far is the method's receiver.
            _ => return Some(keys),
        }
    }
}

/// A run's own copy of a shared value, shared within the run only.
fn own_copy(value: &Dynamic) -> Dynamic {
    value.flatten_clone().into_read_only().into_shared()
}

/// The body `json` (an object's text) as a Rhai value holding what `paths`
/// reads, as `serde_json::from_str::<Dynamic>` would make it; `None` when the
/// text does not parse.
///
/// One walk of the text: the values no chain names are skipped where they
/// stand, and every other value is made by Rhai's own deserializer
/// ([`Pruned`]), so its numbers, strings and nulls are the same Rhai values.
pub fn prune(json: &str, paths: &EventPaths) -> Option<Dynamic> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let body = Pruned(paths).deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(body)
}

/// A value keeping what `0` reads of it: a map, only the keys named (each
/// pruned by its own paths, the last of a key that comes more than once, as
/// a map built from the text keeps); any other value, whole.
struct Pruned<'p>(&'p EventPaths);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Dynamic;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Dynamic, D::Error> {
        match self.0 {
            EventPaths::Whole => Dynamic::deserialize(deserializer),
            EventPaths::Fields(fields) => deserializer.deserialize_any(Fields(fields)),
        }
    }
}

/// [`Pruned`] of a value whose keys `0` names: a value that is not a map is
/// handed whole to Rhai's deserializer.
struct Fields<'p>(&'p BTreeMap<String, EventPaths>);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Dynamic, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(Key)? {
            match self.0.get(key.as_ref()) {
                Some(child) => {
                    let value = access.next_value_seed(Pruned(child))?;
                    map.insert(key.as_ref().into(), value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Dynamic::from_map(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Dynamic, A::Error> {
        Dynamic::deserialize(SeqAccessDeserializer::new(seq))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Dynamic, E> {
        Dynamic::deserialize(v.into_deserializer())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dynamic, E> {
        Dynamic::deserialize(v.into_deserializer())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dynamic, E> {
        Dynamic::deserialize(v.into_deserializer())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dynamic, E> {
        Dynamic::deserialize(v.into_deserializer())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dynamic, E> {
        Dynamic::deserialize(v.into_deserializer())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Dynamic, E> {
        Dynamic::deserialize(().into_deserializer())
    }
}

/// A key, borrowed from the text unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{Sandbox, SandboxLimits, ScriptModules};

    fn paths(source: &str) -> EventPaths {
        let sandbox = Sandbox::new(SandboxLimits::default(), ScriptModules::empty());
        EventPaths::of_script(&sandbox.compile_script(source).unwrap())
    }

    fn fields(list: &[(&str, EventPaths)]) -> EventPaths {
        EventPaths::Fields(
            list.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    use EventPaths::Whole;

    #[test]
    fn finds_the_chains_a_script_reads() {
        assert_eq!(paths("1"), fields(&[]));
        assert_eq!(
            paths("`t=${event.payload.sent} n=${event.event_ts}`"),
            fields(&[("event_ts", Whole), ("payload", fields(&[("sent", Whole)]))])
        );
        assert_eq!(
            paths(
                "event.payload.object.topic.contains(\"B\") || event.payload.object.files[2].x == 1"
            ),
            fields(&[(
                "payload",
                fields(&[("object", fields(&[("topic", Whole), ("files", Whole)]))])
            )])
        );
        assert_eq!(paths("event.payload.keys()"), fields(&[("payload", Whole)]));
        assert_eq!(
            paths("let p = event.payload; p.x + event.payload.y"),
            fields(&[("payload", Whole)])
        );
    }

    #[test]
    fn any_other_use_reads_the_whole_event() {
        for source in [
            "event",
            "let e = event; e.payload",
            "to_json(event)",
            "type_of(event)",
            "\"payload\" in event",
            "event[\"payload\"]",
            "event.keys()",
            "for k in event.keys() { print(k) }",
            "let f = || event.payload; f.call()",
            "fn g(e) { e.payload } g(event)",
            "fn h() { this.payload } event.h()",
            "event.payload.x + event",
            "let x = loop { break event; }; x.payload",
        ] {
            assert_eq!(paths(source), Whole, "{source}");
        }
    }

    /// Runs `source` with the whole body and with the pruned one.
    fn both(body: &str, source: &str) -> (String, String) {
        let sandbox = Sandbox::new(SandboxLimits::default(), ScriptModules::empty());
        let ast = sandbox.compile_script(source).unwrap();
        let paths = EventPaths::of_script(&ast);
        let run = |event: Dynamic| {
            let event = event.into_read_only().into_shared();
            let mut scope = crate::script::run_scope(&event, &Dynamic::UNIT, &Dynamic::UNIT);
            match sandbox
                .script_engine()
                .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            {
                Ok(value) => format!("{} {value:?}", value.type_name()),
                Err(error) => format!("error: {error}"),
            }
        };
        let whole = run(serde_json::from_str(body).unwrap());
        let pruned = run(prune(body, &paths).unwrap());
        (whole, pruned)
    }

    /// While another thread holds the event's own value locked (as Rhai does
    /// for every `event.x` a script on it reads), a run reads its body at
    /// once: a run of the same event sharing that value would sleep 10 ms a
    /// try and panic after five.
    #[test]
    fn a_run_reads_its_own_copy_of_the_events_value() {
        let event = crate::event::Event::parse(
            r#"{"event":"a.b","event_ts":1,"payload":{"x":7}}"#,
            crate::event::Source::Webhook,
        )
        .unwrap();
        let sandbox = Sandbox::new(SandboxLimits::default(), ScriptModules::empty());
        for source in ["event.payload.x", "let e = event; e.payload.x"] {
            let ast = sandbox.compile_script(source).unwrap();
            let paths = EventPaths::of_script(&ast);
            // Made already (a slow condition made it), or read whole.
            let _ = event.body();
            let body = paths.body_of(&event);
            // The same value (a shared value's clone shares its lock), locked.
            let mut own = event.body().clone();
            let _held = own.write_lock::<rhai::Map>().unwrap();
            let started = std::time::Instant::now();
            let mut scope = crate::script::run_scope(&body, &Dynamic::UNIT, &Dynamic::UNIT);
            let value = sandbox
                .script_engine()
                .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                .unwrap();
            assert_eq!(value.as_int(), Ok(7), "{source}");
            assert!(
                started.elapsed() < std::time::Duration::from_millis(10),
                "{source}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn a_pruned_body_reads_as_the_whole_one() {
        let body = r#"{"event":"a.b","event_ts":17000000000001,"payload":{"account_id":"x\"y",
            "object":{"id":9223372036854775807,"big":18446744073709551615,"f":1.5,"n":null,
            "topic":"Board \u00e9","files":[{"t":"MP4"},{"t":"CHAT"}],"e\u0073c":1,"dup":1,"dup":2,
            "empty":{},"list":[],"ok":true},"s":"str"}}"#;
        for source in [
            "event.payload.object.id",
            "event.payload.object.big",
            "event.payload.object.f * 2.0",
            "event.payload.object.n",
            "event.payload.object.missing",
            "event.payload.missing.deeper",
            "event.nothing",
            "event.payload.s.len()",
            "event.payload.s.x",
            "event.event.x",
            "event.payload.object.topic.contains(\"Board\")",
            "event.payload.object.files[1].t",
            "event.payload.object.files.len()",
            "event.payload.object.esc",
            "event.payload.object.dup",
            "event.payload.object.empty",
            "event.payload.object.list",
            "event.payload.object.keys()",
            "to_json(event.payload.object)",
            "type_of(event.payload)",
            "\"id\" in event.payload.object",
            "event.payload.account_id",
            "event.payload.object?.topic",
            "event.payload.nope?.topic",
            "event.payload.object.id = 1",
            "`t=${event.payload.object.topic} n=${event.event_ts}`",
            // A chain through a value that is not a map keeps that value whole.
            "event.payload.object.ok.x",
            "event.payload.object.n.x",
            "event.payload.object.f.x",
            "event.payload.object.big.x",
            "event.payload.object.id.x",
            "event.payload.object.topic.x",
            "event.payload.object.files.x",
            "event.payload.object.list.x",
            "event.payload.object.empty.x",
            "event.payload.object.n?.x",
        ] {
            let (whole, pruned) = both(body, source);
            assert_eq!(whole, pruned, "{source}");
        }
    }

    #[test]
    fn keeps_only_what_the_chains_name() {
        let body = r#"{"a":{"b":1,"c":[1,2]},"d":"x","e":{"f":{"g":true}}}"#;
        let kept = prune(
            body,
            &fields(&[("a", fields(&[("b", Whole)])), ("e", Whole)]),
        )
        .unwrap();
        assert_eq!(
            kept.to_string(),
            "#{\"a\": #{\"b\": 1}, \"e\": #{\"f\": #{\"g\": true}}}"
        );
        assert_eq!(
            prune(body, &Whole).unwrap().to_string(),
            serde_json::from_str::<Dynamic>(body).unwrap().to_string()
        );
        assert!(prune("{", &fields(&[])).is_none());
    }
}

//! The host functions with a side effect that a compiled script calls, found
//! by walking its AST (Rhai's `internals`, pinned to one version): the calls
//! in the script and in its own functions, and the calls in the functions of
//! imported modules that it calls, followed from function to function (and
//! into the modules those modules import). A module function the script
//! never calls does not count, so one module can serve rules with different
//! capabilities.
//!
//! This is a check before running, not the guard: the gateway still checks
//! the capability of every call when the rule runs. A call reached only
//! through a function pointer or a closure stored in a variable is not
//! followed (closures defined in a module whose functions are called are).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rhai::{AST, ASTNode, Expr, FnCallExpr, Module, Shared, Stmt};

use super::CompiledScript;
use super::yaml::Position;
use crate::effects::required_capability;

/// Namespaces of the host functions that have a side effect.
const EFFECT_NAMESPACES: &[&str] = &["zoom", "slack", "email", "http"];

/// One call of a host function with a side effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCall {
    /// The effect's name, such as `slack.post`.
    pub effect: String,
    /// The capability it needs, as `allow:` names it (`http` for any host).
    pub capability: &'static str,
    /// The file the call is written in.
    pub path: PathBuf,
    pub position: Position,
    /// The module functions the script reached it through, outermost first
    /// (`fmt::notify`); empty for a call in the script itself.
    pub through: Vec<String>,
}

/// Every host call with a side effect that `script` makes, in the order
/// found; `scripts_dir` is where imported modules' files are.
pub fn host_calls(script: &CompiledScript, scripts_dir: &Path) -> Vec<HostCall> {
    let mut finder = Finder {
        scripts_dir,
        calls: Vec::new(),
        followed: HashSet::new(),
    };
    let imports = imported_modules(&script.ast);
    for call in calls_in(&script.ast) {
        let position = script.origin.locate(call.line, call.column);
        match resolve(&call, &imports, |_| None) {
            Target::Effect(effect, capability) => finder.record(HostCall {
                effect,
                capability,
                path: script.origin.path.clone(),
                position,
                through: Vec::new(),
            }),
            Target::Module(module) => {
                let through = vec![call.display()];
                finder.follow(&module, &call.name, &through);
            }
            Target::Other => {}
        }
    }
    finder.calls
}

/// A function call as written: `ns::sub::name(...)` or `name(...)`.
struct Call {
    namespace: Vec<String>,
    name: String,
    line: usize,
    column: usize,
}

impl Call {
    fn display(&self) -> String {
        let mut text = self.namespace.join("::");
        if !text.is_empty() {
            text.push_str("::");
        }
        text.push_str(&self.name);
        text
    }
}

/// What a call reaches.
enum Target {
    Effect(String, &'static str),
    Module(Shared<Module>),
    Other,
}

/// Resolves a call's namespace: an import alias (`imports`, or for calls
/// inside a module its sub-modules through `sub_module`) first, as Rhai does,
/// then the host functions.
fn resolve(
    call: &Call,
    imports: &HashMap<String, Shared<Module>>,
    sub_module: impl Fn(&str) -> Option<Shared<Module>>,
) -> Target {
    let Some((root, rest)) = call.namespace.split_first() else {
        return Target::Other;
    };
    if let Some(module) = imports.get(root).cloned().or_else(|| sub_module(root)) {
        let mut module = module;
        for segment in rest {
            let Some(inner) = sub_module_of(&module, segment) else {
                return Target::Other;
            };
            module = inner;
        }
        return Target::Module(module);
    }
    if rest.is_empty() && EFFECT_NAMESPACES.contains(&root.as_str()) {
        let effect = format!("{root}.{}", call.name);
        if let Some(capability) = required_capability(&effect) {
            return Target::Effect(effect, capability);
        }
    }
    Target::Other
}

fn sub_module_of(module: &Module, name: &str) -> Option<Shared<Module>> {
    module
        .iter_sub_modules()
        .find(|(alias, _)| *alias == name)
        .map(|(_, module)| module.clone())
}

struct Finder<'a> {
    scripts_dir: &'a Path,
    calls: Vec<HostCall>,
    /// Module functions already walked: (module, function name).
    followed: HashSet<(usize, String)>,
}

impl Finder<'_> {
    fn record(&mut self, call: HostCall) {
        let known = self
            .calls
            .iter()
            .any(|c| c.path == call.path && c.position == call.position && c.effect == call.effect);
        if !known {
            self.calls.push(call);
        }
    }

    /// Walks the functions called `name` in `module` (every arity), and
    /// what they call in turn.
    fn follow(&mut self, module: &Shared<Module>, name: &str, through: &[String]) {
        // The module's address identifies it while the script holds it.
        let key = (Shared::as_ptr(module) as usize, name.to_string());
        if !self.followed.insert(key) {
            return;
        }
        let path = module
            .id()
            .map(|id| self.scripts_dir.join(id))
            .unwrap_or_else(|| self.scripts_dir.to_path_buf());
        let functions: Vec<_> = module
            .iter_script_fn_info()
            .filter(|(.., fn_name, _, _)| *fn_name == name || is_closure(fn_name))
            .map(|(.., def)| def.clone())
            .collect();
        for function in functions {
            let mut one = Module::new();
            one.set_script_fn(function);
            for call in calls_in(&AST::new_from_module(one)) {
                let position = Position {
                    line: call.line,
                    column: call.column,
                };
                match resolve(&call, &HashMap::new(), |alias| sub_module_of(module, alias)) {
                    Target::Effect(effect, capability) => self.record(HostCall {
                        effect,
                        capability,
                        path: path.clone(),
                        position,
                        through: through.to_vec(),
                    }),
                    Target::Module(inner) => {
                        let through = extend(through, call.display());
                        self.follow(&inner, &call.name, &through);
                    }
                    Target::Other if call.namespace.is_empty() => {
                        let through = extend(through, call.name.clone());
                        self.follow(module, &call.name, &through);
                    }
                    Target::Other => {}
                }
            }
        }
    }
}

fn extend(through: &[String], step: String) -> Vec<String> {
    let mut longer = through.to_vec();
    longer.push(step);
    longer
}

/// Rhai names the functions it makes of closures `anon$...`.
fn is_closure(name: &str) -> bool {
    name.starts_with("anon$")
}

/// Every function call in the AST (statements and function bodies).
fn calls_in(ast: &AST) -> Vec<Call> {
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        // A call is an expression, or a statement of its own (`f(x);`).
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, position)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, position))) => Some((call, position)),
            _ => None,
        };
        if let Some((call, position)) = call
            && !call.is_operator_call()
        {
            calls.push(call_of(call, *position));
        }
        true
    });
    calls
}

fn call_of(call: &FnCallExpr, position: rhai::Position) -> Call {
    let start = if call.is_qualified() {
        call.namespace.position()
    } else {
        position
    };
    Call {
        namespace: call
            .namespace
            .path
            .iter()
            .map(|segment| segment.name.to_string())
            .collect(),
        name: call.name.to_string(),
        line: start.line().unwrap_or(1),
        column: start.position().unwrap_or(1),
    }
}

/// The modules the script imports, by alias (`import "zoomfmt" as fmt;`),
/// from the modules its compilation resolved.
fn imported_modules(ast: &AST) -> HashMap<String, Shared<Module>> {
    let Some(resolver) = ast.resolver() else {
        return HashMap::new();
    };
    let mut imports = HashMap::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Import(import, _))) = path.last() {
            let (target, alias) = &**import;
            if let Expr::StringConstant(target, _) = target
                && let Some((_, module)) = resolver.iter().find(|(key, _)| *key == target.as_str())
            {
                imports.insert(alias.name.to_string(), module.clone());
            }
        }
        true
    });
    imports
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rules::ScriptOrigin;
    use crate::script::{Sandbox, SandboxLimits, ScriptModules};

    fn sandbox_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Sandbox) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let modules = ScriptModules::load(dir.path(), &SandboxLimits::default()).unwrap();
        (dir, Sandbox::new(SandboxLimits::default(), modules))
    }

    fn found(sandbox: &Sandbox, scripts: &Path, source: &str) -> Vec<String> {
        let script = CompiledScript {
            ast: Arc::new(sandbox.compile_script(source).unwrap()),
            event_paths: Arc::new(crate::script::event_paths::EventPaths::Whole),
            last_effects: Arc::new([]),
            origin: ScriptOrigin {
                path: PathBuf::from("rules/r.yaml"),
                start: Position {
                    line: 10,
                    column: 3,
                },
            },
        };
        host_calls(&script, scripts)
            .into_iter()
            .map(|call| {
                let file = call.path.strip_prefix(scripts).unwrap_or(&call.path);
                format!(
                    "{} {}:{}:{} {} via [{}]",
                    call.effect,
                    file.display(),
                    call.position.line,
                    call.position.column,
                    call.capability,
                    call.through.join(", ")
                )
            })
            .collect()
    }

    #[test]
    fn finds_calls_in_the_script_with_positions_in_the_rule_file() {
        let (dir, sandbox) = sandbox_with(&[]);
        let source = "let x = zoom::uuid(\"a\");\nif x != \"\" {\n  email::send(#{to: \"a@b.c\"});\n}\nfn later() { http::request(#{url: \"https://x.test\"}) }\nlog::info(\"hi\"); state::set(\"k\", 1);";
        assert_eq!(
            found(&sandbox, dir.path(), source),
            vec![
                "email.send rules/r.yaml:12:5 email via []",
                "http.request rules/r.yaml:14:16 http via []",
            ]
        );
    }

    #[test]
    fn follows_module_functions_the_script_calls_and_only_those() {
        let (dir, sandbox) = sandbox_with(&[
            (
                "notify.rhai",
                "import \"lib/post\" as post;\nfn pure(x) { x + 1 }\nfn tell(text) {\n  helper(text)\n}\nfn helper(text) { post::to_slack(text) }\nfn unused() { email::send(#{}) }\n",
            ),
            (
                "lib/post.rhai",
                "fn to_slack(text) {\n    slack::post(\"#x\", text)\n}\n",
            ),
        ]);
        let pure_only = "import \"notify\" as n;\nn::pure(1);";
        assert!(found(&sandbox, dir.path(), pure_only).is_empty());
        let telling = "import \"notify\" as n;\nlet y = n::pure(1);\nn::tell(`${y}`);";
        assert_eq!(
            found(&sandbox, dir.path(), telling),
            vec!["slack.post lib/post.rhai:2:5 slack via [n::tell, helper, post::to_slack]"]
        );
    }

    #[test]
    fn an_alias_named_like_a_host_module_is_the_module() {
        let (dir, sandbox) = sandbox_with(&[("quiet.rhai", "fn post(a, b) { a + b }\n")]);
        let source = "import \"quiet\" as slack;\nslack::post(\"a\", \"b\");";
        assert!(found(&sandbox, dir.path(), source).is_empty());
    }
}

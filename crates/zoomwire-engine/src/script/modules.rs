//! The scripts folder, jailed: every `*.rhai` file under it, compiled once
//! into a Rhai module, and the only place `import` can reach.
//!
//! Rhai's `FileModuleResolver` is no jail (`import "../x"` and absolute paths
//! load files outside its base), so scripts never touch the file system when
//! they import. At load, the folder is walked (sub-folders give names such as
//! `lib/util`), every file is read and compiled, and each module is evaluated
//! in dependency order so that a module may import another. Symlinks are
//! followed only when they resolve inside the folder. After that, imports are
//! answered from memory by [`JailedResolver`], which refuses `..`, absolute
//! paths and anything it did not load, with a message that says why.
//!
//! Module top-level code runs at load, on a thread with the sandbox's stack
//! size, like any other script: all modules together within one deadline
//! (`load_timeout`) and one memory budget (`max_memory`), so a check, a
//! start or a hot reload cannot be held up or blown up by the scripts folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rhai::module_resolvers::ModuleResolver;
use rhai::{AST, Dynamic, Engine, EvalAltResult, Module, Position, Scope, Shared};

use super::ended_early;
use super::engine::{EngineKind, build_engine_with_resolver};
use super::error::{Evaluation, ScriptError, parse_error_message, script_error};
use super::limits::SandboxLimits;
use super::memory::{budget_exceeded, enter_budget, format_bytes, rearm_budget};
use super::run::{ActiveRun, enter_run, run_terminated};
use super::value::exceeds_depth;
use crate::duration::format_duration;

/// Largest script file accepted.
pub const MAX_SCRIPT_FILE_BYTES: u64 = 1024 * 1024;
/// Deepest sub-folder nesting walked under the scripts folder.
const MAX_FOLDER_DEPTH: usize = 16;
/// File name extension of modules.
const EXTENSION: &str = "rhai";

type SharedModule = Shared<Module>;
/// Built modules by import name, with the file each came from.
type BuiltModules = BTreeMap<String, (PathBuf, SharedModule)>;

/// One problem with one file of the scripts folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptFileError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ScriptFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ScriptFileError {}

/// The compiled modules of the scripts folder.
#[derive(Clone, Default)]
pub struct ScriptModules {
    files: Vec<PathBuf>,
    modules: Arc<BTreeMap<String, SharedModule>>,
    refused: Arc<BTreeMap<String, String>>,
}

impl fmt::Debug for ScriptModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptModules")
            .field("modules", &self.modules.keys().collect::<Vec<_>>())
            .field("refused", &self.refused)
            .finish()
    }
}

impl ScriptModules {
    /// Loads and compiles every `*.rhai` file under `scripts_dir`, reporting
    /// every error at once. A folder that does not exist holds no modules.
    pub fn load(
        scripts_dir: &Path,
        limits: &SandboxLimits,
    ) -> Result<ScriptModules, Vec<ScriptFileError>> {
        let limits = limits.effective();
        let scripts_dir = scripts_dir.to_path_buf();
        let worker_dir = scripts_dir.clone();
        let outcome = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("zoomwire-script-load".into())
                .stack_size(limits.stack_size)
                .spawn_scoped(scope, || load_on_this_thread(&worker_dir, &limits))
                .map(|handle| handle.join())
        });
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(vec![file_error(
                &scripts_dir,
                "internal error: loading the scripts folder panicked",
            )]),
            Err(spawn_error) => Err(vec![file_error(
                &scripts_dir,
                &format!("cannot start the thread that loads scripts: {spawn_error}"),
            )]),
        }
    }

    /// No modules: every import fails.
    pub fn empty() -> ScriptModules {
        ScriptModules::default()
    }

    /// The files the modules were loaded from.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(PathBuf::as_path)
    }

    /// The import names of the loaded modules (`recordings`, `lib/util`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Names that exist in the folder but are refused, with the reason
    /// (symlinks that lead outside the folder).
    pub fn refused(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refused.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The resolver engines use: answers imports from these modules only.
    pub(crate) fn resolver(&self) -> JailedResolver {
        JailedResolver {
            modules: self.modules.clone(),
            refused: self.refused.clone(),
        }
    }
}

/// Answers `import` from the loaded modules, and from nothing else.
#[derive(Clone)]
pub(crate) struct JailedResolver {
    modules: Arc<BTreeMap<String, SharedModule>>,
    refused: Arc<BTreeMap<String, String>>,
}

impl ModuleResolver for JailedResolver {
    fn resolve(
        &self,
        _engine: &Engine,
        _source: Option<&str>,
        path: &str,
        position: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let name = import_name(path).map_err(|reason| refusal(path, reason, position))?;
        if let Some(module) = self.modules.get(&name) {
            return Ok(module.clone());
        }
        Err(missing(path, &name, &self.refused, position))
    }
}

/// The module name an import path denotes, or why it is refused.
/// `lib/util`, `lib/util.rhai` and `./lib/util` all denote `lib/util`.
pub(crate) fn import_name(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("an import path may not be empty".into());
    }
    if path.contains(['\\', '\0']) {
        return Err("import paths use `/` and may not contain `\\`".into());
    }
    let has_drive = path.len() >= 2 && path.as_bytes()[1] == b':';
    if path.starts_with('/') || has_drive {
        return Err(
            "absolute paths are not allowed, imports are relative to the scripts folder".into(),
        );
    }
    let path = path.strip_suffix(".rhai").unwrap_or(path);
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "." => {}
            ".." => return Err("`..` would leave the scripts folder".into()),
            "" => return Err("an import path may not contain an empty segment".into()),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("an import path must name a module".into());
    }
    Ok(parts.join("/"))
}

fn refusal(path: &str, reason: String, position: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorInModule(
        path.to_string(),
        Box::new(EvalAltResult::ErrorRuntime(
            format!("import `{path}` is refused: {reason}").into(),
            position,
        )),
        position,
    ))
}

fn missing(
    path: &str,
    name: &str,
    refused: &BTreeMap<String, String>,
    position: Position,
) -> Box<EvalAltResult> {
    let prefixes = name
        .match_indices('/')
        .map(|(i, _)| &name[..i])
        .chain(std::iter::once(name));
    for prefix in prefixes {
        if let Some(reason) = refused.get(prefix) {
            return refusal(path, reason.clone(), position);
        }
    }
    Box::new(EvalAltResult::ErrorInModule(
        path.to_string(),
        Box::new(EvalAltResult::ErrorRuntime(
            format!("module `{name}` not found in the scripts folder").into(),
            position,
        )),
        position,
    ))
}

/// One script file found in the folder.
struct SourceFile {
    name: String,
    path: PathBuf,
    text: String,
}

/// What the folder walk found.
#[derive(Default)]
struct Found {
    files: Vec<SourceFile>,
    refused: BTreeMap<String, String>,
    errors: Vec<ScriptFileError>,
}

fn load_on_this_thread(
    scripts_dir: &Path,
    limits: &SandboxLimits,
) -> Result<ScriptModules, Vec<ScriptFileError>> {
    let root = match scripts_dir.canonicalize() {
        Ok(root) => root,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ScriptModules::empty());
        }
        Err(error) => return Err(vec![file_error(scripts_dir, &error.to_string())]),
    };
    let mut found = Found::default();
    let mut visited = BTreeSet::from([root.clone()]);
    walk(&root, scripts_dir, "", 0, &mut visited, &mut found);
    let Found {
        files,
        refused,
        mut errors,
    } = found;
    let (modules, build_errors) = build_modules(files, &refused, limits);
    errors.extend(build_errors);
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
        return Err(errors);
    }
    let files = modules.values().map(|(path, _)| path.clone()).collect();
    let modules = modules
        .into_iter()
        .map(|(name, (_, module))| (name, module))
        .collect();
    Ok(ScriptModules {
        files,
        modules: Arc::new(modules),
        refused: Arc::new(refused),
    })
}

/// Walks `real_dir` (canonical), naming files as found under `shown_dir`.
fn walk(
    real_dir: &Path,
    shown_dir: &Path,
    prefix: &str,
    depth: usize,
    visited: &mut BTreeSet<PathBuf>,
    found: &mut Found,
) {
    if depth > MAX_FOLDER_DEPTH {
        found.errors.push(file_error(
            shown_dir,
            &format!("folders nested deeper than {MAX_FOLDER_DEPTH} levels are not read"),
        ));
        return;
    }
    let entries = match std::fs::read_dir(real_dir) {
        Ok(entries) => entries,
        Err(error) => {
            found.errors.push(file_error(shown_dir, &error.to_string()));
            return;
        }
    };
    let root = visited.first().cloned().unwrap_or_default();
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let shown = shown_dir.join(&file_name);
        let Ok(link_metadata) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let (real_path, metadata) = if link_metadata.file_type().is_symlink() {
            match follow_symlink(&entry.path(), &root) {
                Ok(target) => target,
                Err(reason) => {
                    let name = module_name(prefix, &file_name);
                    if file_name.ends_with(".rhai") || !file_name.contains('.') {
                        found.refused.insert(name, reason);
                    }
                    continue;
                }
            }
        } else {
            (entry.path(), link_metadata)
        };
        if metadata.is_dir() {
            if visited.insert(real_path.clone()) {
                let prefix = module_name(prefix, &file_name);
                walk(&real_path, &shown, &prefix, depth + 1, visited, found);
            }
        } else if metadata.is_file()
            && Path::new(&file_name).extension().and_then(|e| e.to_str()) == Some(EXTENSION)
        {
            read_source(&real_path, shown, module_name(prefix, &file_name), found);
        }
    }
}

/// Resolves a symlink, refusing it when it leads outside `root`.
fn follow_symlink(link: &Path, root: &Path) -> Result<(PathBuf, std::fs::Metadata), String> {
    let target = link
        .canonicalize()
        .map_err(|_| "it is a symlink whose target does not exist".to_string())?;
    if !target.starts_with(root) {
        return Err("it is a symlink that leads outside the scripts folder".to_string());
    }
    let metadata = std::fs::metadata(&target).map_err(|error| error.to_string())?;
    Ok((target, metadata))
}

fn module_name(prefix: &str, file_name: &str) -> String {
    let stem = file_name.strip_suffix(".rhai").unwrap_or(file_name);
    if prefix.is_empty() {
        stem.to_string()
    } else {
        format!("{prefix}/{stem}")
    }
}

fn read_source(real_path: &Path, shown: PathBuf, name: String, found: &mut Found) {
    let size = std::fs::metadata(real_path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_SCRIPT_FILE_BYTES {
        found.errors.push(file_error(
            &shown,
            &format!("script is {size} bytes, larger than the {MAX_SCRIPT_FILE_BYTES} byte limit"),
        ));
        return;
    }
    match std::fs::read_to_string(real_path) {
        Ok(text) => found.files.push(SourceFile {
            name,
            path: shown,
            text,
        }),
        Err(error) => found.errors.push(file_error(&shown, &error.to_string())),
    }
}

/// Compiles every file and evaluates each into a module, imports first.
fn build_modules(
    files: Vec<SourceFile>,
    refused: &BTreeMap<String, String>,
    limits: &SandboxLimits,
) -> (BuiltModules, Vec<ScriptFileError>) {
    let state = Arc::new(Mutex::new(LoadState::default()));
    let resolver = LoadResolver {
        state: state.clone(),
        refused: Arc::new(refused.clone()),
        limits: limits.clone(),
        deadline: Instant::now() + limits.load_timeout,
    };
    let engine = build_engine_with_resolver(limits, resolver.clone(), EngineKind::Script);
    let mut errors = Vec::new();
    {
        let mut state = state.lock();
        for file in files {
            match engine.compile(&file.text) {
                Ok(mut ast) => {
                    ast.set_source(format!("{}.rhai", file.name));
                    state.sources.insert(file.name, (file.path, ast));
                }
                Err(error) => {
                    let rhai::ParseError(kind, position) = &error;
                    errors.push(ScriptFileError {
                        path: file.path,
                        line: position.line().unwrap_or(1),
                        column: position.position().unwrap_or(1),
                        message: parse_error_message(&engine, kind),
                    });
                }
            }
        }
    }
    let names: Vec<String> = state.lock().sources.keys().cloned().collect();
    let _budget = enter_budget(limits.max_memory);
    for name in names {
        // One deadline and one budget for the folder; each module (with the
        // modules it imports) is a run of its own, so that one module's end
        // is not the next one's.
        rearm_budget();
        let _run = enter_run(ActiveRun::new(
            resolver.deadline,
            Arc::default(),
            Arc::default(),
            None,
        ));
        // Errors are recorded in the state, on the file that has them.
        let _ = resolver.build(&engine, &name, Position::NONE);
    }
    let state = std::mem::take(&mut *state.lock());
    errors.extend(state.errors);
    (state.built, errors)
}

#[derive(Default)]
struct LoadState {
    sources: BTreeMap<String, (PathBuf, AST)>,
    built: BuiltModules,
    failed: BTreeSet<String>,
    in_progress: Vec<String>,
    errors: Vec<ScriptFileError>,
}

/// Resolves imports while the folder loads, building modules on demand.
#[derive(Clone)]
struct LoadResolver {
    state: Arc<Mutex<LoadState>>,
    refused: Arc<BTreeMap<String, String>>,
    limits: SandboxLimits,
    /// When the whole folder's load must be done.
    deadline: Instant,
}

impl LoadResolver {
    fn build(
        &self,
        engine: &Engine,
        path: &str,
        position: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let name = import_name(path).map_err(|reason| refusal(path, reason, position))?;
        let (file, ast) = {
            let mut state = self.state.lock();
            if let Some((_, module)) = state.built.get(&name) {
                return Ok(module.clone());
            }
            if state.failed.contains(&name) {
                return Err(failed_import(path, &name, position));
            }
            if state.in_progress.contains(&name) {
                let mut cycle = state.in_progress.clone();
                cycle.push(name.clone());
                return Err(refusal(
                    path,
                    format!("import cycle: {}", cycle.join(" -> ")),
                    position,
                ));
            }
            let Some((file, ast)) = state.sources.get(&name).cloned() else {
                return Err(missing(path, &name, &self.refused, position));
            };
            state.in_progress.push(name.clone());
            (file, ast)
        };
        // The lock is released: evaluating the module may import others.
        let result = self.evaluate(engine, &ast);
        let mut state = self.state.lock();
        state.in_progress.retain(|n| *n != name);
        match result {
            Ok(module) => {
                let module: SharedModule = module.into();
                state.built.insert(name, (file, module.clone()));
                Ok(module)
            }
            Err((message, line, column)) => {
                state.failed.insert(name.clone());
                state.errors.push(ScriptFileError {
                    path: file,
                    line,
                    column,
                    message,
                });
                Err(failed_import(path, &name, position))
            }
        }
    }

    /// Runs a module's top-level code, unless the folder's load time is spent.
    fn evaluate(&self, engine: &Engine, ast: &AST) -> Result<Module, (String, usize, usize)> {
        if Instant::now() >= self.deadline {
            let timeout = format_duration(self.limits.load_timeout);
            return Err((
                format!(
                    "not loaded: the scripts folder used up its {timeout} load timeout before this module's turn (load_timeout = {timeout})"
                ),
                1,
                1,
            ));
        }
        let module = Module::eval_ast_as_new(Scope::new(), ast, engine)
            .and_then(|module| ended_early(Ok(Dynamic::UNIT), run_terminated()).map(|_| module))
            .map_err(|error| module_error(engine, error, &self.limits))?;
        if budget_exceeded() {
            return Err((memory_message(&self.limits), 1, 1));
        }
        self.check_variables(module)
    }

    /// Refuses module variables too deep to share safely between runs.
    fn check_variables(&self, module: Module) -> Result<Module, (String, usize, usize)> {
        let max_depth = self.limits.max_value_depth;
        for (variable, value) in module.iter_var() {
            if exceeds_depth(value, max_depth) {
                return Err((
                    format!(
                        "module variable `{variable}` is nested too deeply (max_value_depth = {max_depth})"
                    ),
                    1,
                    1,
                ));
            }
        }
        Ok(module)
    }
}

impl ModuleResolver for LoadResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        position: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        self.build(engine, path, position)
    }
}

fn failed_import(path: &str, name: &str, position: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorInModule(
        path.to_string(),
        Box::new(EvalAltResult::ErrorRuntime(
            format!("module `{name}` failed to load (see its own error)").into(),
            position,
        )),
        position,
    ))
}

/// The message and position of an error in a module's top-level code.
fn module_error(
    engine: &Engine,
    error: Box<EvalAltResult>,
    limits: &SandboxLimits,
) -> (String, usize, usize) {
    let position = error.position();
    let line = position.line().unwrap_or(1);
    let column = position.position().unwrap_or(1);
    if let EvalAltResult::ErrorInModule(_, inner, _) = &*error
        && let EvalAltResult::ErrorRuntime(message, _) = &**inner
    {
        return (message.to_string(), line, column);
    }
    let evaluation = Evaluation::script(limits.load_timeout, limits);
    let message = match script_error(engine, error, evaluation, &[]) {
        ScriptError::Timeout { after } => format!(
            "the module's top-level code exceeded the {} load timeout of the scripts folder (load_timeout = {})",
            format_duration(after),
            format_duration(after)
        ),
        ScriptError::Runtime { message, .. } => message,
        ScriptError::Limit { limit, .. } if limit == "max_memory" => memory_message(limits),
        other => other.to_string(),
    };
    (message, line, column)
}

fn memory_message(limits: &SandboxLimits) -> String {
    format!(
        "the module's top-level code exceeded the memory budget of the scripts folder (max_memory = {})",
        format_bytes(limits.max_memory)
    )
}

fn file_error(path: &Path, message: &str) -> ScriptFileError {
    ScriptFileError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn resolve(modules: &ScriptModules, path: &str) -> Result<(), String> {
        let engine = Engine::new();
        modules
            .resolver()
            .resolve(&engine, None, path, Position::NONE)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn import_names_stay_inside_the_folder() {
        assert_eq!(import_name("lib/util").unwrap(), "lib/util");
        assert_eq!(import_name("./lib/util.rhai").unwrap(), "lib/util");
        for path in [
            "../secret",
            "lib/../../secret",
            "/etc/passwd",
            "C:/x",
            "a\\b",
            "",
            "a//b",
            ".",
        ] {
            assert!(import_name(path).is_err(), "{path} must be refused");
        }
        assert!(
            import_name("../x")
                .unwrap_err()
                .contains("`..` would leave")
        );
        assert!(import_name("/x").unwrap_err().contains("absolute paths"));
    }

    #[test]
    fn loads_sub_folders_and_import_chains() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "lib/util.rhai", "fn double(x) { x * 2 }");
        write(
            dir.path(),
            "a.rhai",
            "import \"lib/util\" as util;\nfn quad(x) { util::double(util::double(x)) }",
        );
        write(dir.path(), "notes.txt", "not a script");
        write(dir.path(), ".hidden.rhai", "this is not rhai");
        let modules = ScriptModules::load(dir.path(), &SandboxLimits::default()).unwrap();
        let names: Vec<_> = modules.names().collect();
        assert_eq!(names, ["a", "lib/util"]);
        assert_eq!(modules.files().count(), 2);
        assert!(resolve(&modules, "lib/util").is_ok());
        assert!(resolve(&modules, "a.rhai").is_ok());
        let missing = resolve(&modules, "b").unwrap_err();
        assert!(missing.contains("module `b` not found"), "{missing}");
        let escape = resolve(&modules, "../a").unwrap_err();
        assert!(escape.contains("import `../a` is refused"), "{escape}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_leading_outside_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.rhai", "fn secret() { 42 }");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real.rhai", "fn real() { 1 }");
        std::os::unix::fs::symlink(
            outside.path().join("secret.rhai"),
            dir.path().join("evil.rhai"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil_dir")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.rhai"), dir.path().join("alias.rhai"))
            .unwrap();
        let modules = ScriptModules::load(dir.path(), &SandboxLimits::default()).unwrap();
        let names: Vec<_> = modules.names().collect();
        assert_eq!(names, ["alias", "real"]);
        let error = resolve(&modules, "evil").unwrap_err();
        assert!(
            error.contains("leads outside the scripts folder"),
            "{error}"
        );
        let error = resolve(&modules, "evil_dir/secret").unwrap_err();
        assert!(
            error.contains("leads outside the scripts folder"),
            "{error}"
        );
    }

    #[test]
    fn reports_every_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bad_syntax.rhai", "fn f( {");
        write(
            dir.path(),
            "bad_import.rhai",
            "\n  import \"../outside\" as o;",
        );
        write(dir.path(), "throws.rhai", "let x = 1;\nthrow \"no\";");
        write(dir.path(), "cycle_a.rhai", "import \"cycle_b\" as b;");
        write(dir.path(), "cycle_b.rhai", "import \"cycle_a\" as a;");
        // Modules load in name order: the endless one last, as it may spend
        // the folder's whole load time (where the clock trips before the
        // operation count: a debug build, a busy machine).
        write(dir.path(), "z_endless.rhai", "loop {}");
        let limits = SandboxLimits {
            load_timeout: std::time::Duration::from_millis(200),
            ..SandboxLimits::default()
        };
        let errors = ScriptModules::load(dir.path(), &limits).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let find = |file: &str| {
            text.iter()
                .find(|e| e.contains(file))
                .unwrap_or_else(|| panic!("no error for {file}: {text:#?}"))
                .clone()
        };
        assert!(
            find("bad_syntax.rhai").contains("bad_syntax.rhai:1:"),
            "{text:#?}"
        );
        let import = find("bad_import.rhai");
        assert!(
            import.contains(":2:10: import `../outside` is refused: `..` would leave"),
            "{import}"
        );
        assert!(
            find("throws.rhai").contains("throws.rhai:2:1: no"),
            "{text:#?}"
        );
        assert!(
            find("cycle_a.rhai").contains("`cycle_b` failed to load"),
            "{text:#?}"
        );
        assert!(
            find("cycle_b.rhai").contains("import cycle: cycle_a -> cycle_b -> cycle_a"),
            "{text:#?}"
        );
        // Whichever limit trips first (the clock in debug, the operation count
        // in a fast release build), an endless module stops with its name.
        let endless = find("z_endless.rhai");
        assert!(
            endless.contains(
                "exceeded the 200ms load timeout of the scripts folder (load_timeout = 200ms)"
            ) || endless.contains("exceeded the operation limit (max_operations = "),
            "{text:#?}"
        );
    }

    #[test]
    fn a_missing_folder_holds_no_modules() {
        let dir = tempfile::tempdir().unwrap();
        let modules =
            ScriptModules::load(&dir.path().join("nope"), &SandboxLimits::default()).unwrap();
        assert_eq!(modules.files().count(), 0);
    }

    #[test]
    fn module_top_level_cannot_call_effects() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "noisy.rhai", "slack::post(\"#a\", \"loaded\");");
        let errors = ScriptModules::load(dir.path(), &SandboxLimits::default()).unwrap_err();
        assert!(
            errors[0]
                .message
                .contains("only available while a rule runs"),
            "{}",
            errors[0]
        );
    }
}

//! git's subcommands and their options, and reading a subcommand's arguments the way
//! git's parse-options does.
//!
//! git accepts any unambiguous prefix of a long option (`reset --har` is `--hard`),
//! splits bundled short options (`clean -fd` is `-f -d`) and takes a value glued to a
//! short option (`commit -mfoo` is `-m foo`). Argument patterns compare words, so the
//! arguments are first rewritten into the spelling git would have read: abbreviations
//! expanded, bundles split. Short and long names are never swapped for each other;
//! rules are written against both spellings.
//!
//! The table (`git_options/options.txt`) is generated from git itself by
//! `git_options/generate.sh`, for the version the guest images ship ([`git_version`]).
//! Commands whose arguments are not parsed by one parse-options table (`diff`,
//! `rev-list`, `rev-parse`, the plumbing that reads its own arguments, scripts such as
//! `submodule`, aliases) have no table, and their arguments are left as given.

use std::collections::HashMap;
use std::sync::LazyLock;

const TABLE: &str = include_str!("git_options/options.txt");

/// How git runs `git NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitSubcommand {
    /// Compiled into the git binary.
    Builtin,
    /// A separate compiled program in git's exec-path (`daemon`, `http-backend`,
    /// `remote-https`, `imap-send`, …).
    Program,
    /// A script in git's exec-path, run by this interpreter (basename of its `#!` line:
    /// `sh`, `perl`, `python`).
    Script {
        /// The interpreter.
        interpreter: &'static str,
    },
}

/// How git runs `git NAME`, or `None` if `NAME` is neither a builtin nor in git's
/// exec-path (an alias, or unknown). Describes [`git_version`]; a script whose package
/// an image leaves out (`svn`, `send-email`) is still listed.
pub fn git_subcommand_kind(name: &str) -> Option<GitSubcommand> {
    TABLES.kinds.get(name).copied()
}

/// The git version the table was generated from (`2.47.3`).
pub fn git_version() -> &'static str {
    TABLES.version
}

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionValue {
    /// A flag.
    None,
    /// `--opt=v` or `--opt v`; `-ov` or `-o v`.
    Required,
    /// Only attached: `--opt=v`, `-ov`.
    Optional,
}

/// One option of a subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GitOption {
    /// Short name (`f` for `-f`).
    pub short: Option<char>,
    /// Long name as git declares it (`force`, `no-verify`).
    pub long: Option<&'static str>,
    /// Whether it takes a value.
    pub value: OptionValue,
    /// Whether git accepts the `--no-` form (for a `no-x` option: the `--x` form).
    pub negatable: bool,
}

/// The options of one subcommand (or sub-subcommand: `stash push`).
#[derive(Debug, Default)]
pub struct OptionTable {
    /// The subcommand (`stash`).
    pub command: &'static str,
    /// The sub-subcommand (`push`), if this table is one.
    pub sub: Option<&'static str>,
    /// Options in git's declaration order (which decides between aliases).
    pub options: Vec<GitOption>,
    /// git expands unambiguous prefixes of long options. False where git parses with
    /// `PARSE_OPT_KEEP_UNKNOWN_OPT` (log, cherry-pick, …): it passes unknown options on.
    pub abbrev: bool,
    /// Options end at the first non-option word (ls-remote, grep, …).
    pub stop_at_non_option: bool,
    /// `-<digits>` is an option (grep's `-3` is `-C 3`).
    pub number: bool,
    /// Pairs of long names that are one option (`--branches` is `--all`).
    aliases: Vec<(&'static str, &'static str)>,
    /// Tables of the sub-subcommands, if the command has them.
    subcommands: HashMap<&'static str, OptionTable>,
}

impl OptionTable {
    /// The table of a sub-subcommand (`remote` → `add`).
    pub fn subcommand(&self, name: &str) -> Option<&OptionTable> {
        self.subcommands.get(name)
    }

    fn short(&self, c: char) -> Option<&GitOption> {
        self.options.iter().find(|o| o.short == Some(c))
    }

    fn is_alias(&self, a: &str, b: &str) -> bool {
        self.aliases
            .iter()
            .any(|&(x, y)| (a == x || a == y) && (b == x || b == y))
    }
}

/// The option table of a git subcommand (`push`), if git parses its options with one.
pub fn git_option_table(subcommand: &str) -> Option<&'static OptionTable> {
    match subcommand {
        "archive" => Some(&ARCHIVE),
        _ => TABLES.commands.get(subcommand),
    }
}

struct Tables {
    version: &'static str,
    kinds: HashMap<&'static str, GitSubcommand>,
    commands: HashMap<&'static str, OptionTable>,
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| parse_table(TABLE));

/// `git archive` parses its arguments twice: first `--output`, `--remote` and `--exec`
/// with `PARSE_OPT_KEEP_UNKNOWN_OPT` (so never abbreviated), then, for a local archive,
/// everything else. Its help shows the second parse, its completion list the first, so
/// the generator skips it; this is the first parse, which decides what `--exec` runs.
static ARCHIVE: LazyLock<OptionTable> = LazyLock::new(|| {
    let opt = |short, long| GitOption {
        short,
        long: Some(long),
        value: OptionValue::Required,
        negatable: true,
    };
    OptionTable {
        command: "archive",
        options: vec![
            opt(Some('o'), "output"),
            opt(None, "remote"),
            opt(None, "exec"),
        ],
        ..OptionTable::default()
    }
});

fn parse_table(text: &'static str) -> Tables {
    let mut tables = Tables {
        version: "",
        kinds: HashMap::new(),
        commands: HashMap::new(),
    };
    // The table the `opt` and `alias` lines belong to: (command, sub-subcommand).
    let mut current: Option<(&'static str, Option<&'static str>)> = None;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [comment, ..] if comment.starts_with('#') => {}
            ["version", v] => tables.version = v,
            ["kind", name, "builtin"] => {
                tables.kinds.insert(name, GitSubcommand::Builtin);
            }
            ["kind", name, "program"] => {
                tables.kinds.insert(name, GitSubcommand::Program);
            }
            ["kind", name, "script", interpreter] => {
                let interpreter = *interpreter;
                tables
                    .kinds
                    .insert(name, GitSubcommand::Script { interpreter });
            }
            ["cmd", name, flags @ ..] => {
                let t = table_header(name, None, flags).unwrap_or_else(|| malformed(n, line));
                tables.commands.insert(name, t);
                current = Some((name, None));
            }
            ["sub", name, sub, flags @ ..] => {
                let t = table_header(name, Some(sub), flags).unwrap_or_else(|| malformed(n, line));
                let parent = tables
                    .commands
                    .get_mut(name)
                    .unwrap_or_else(|| malformed(n, line));
                parent.subcommands.insert(sub, t);
                current = Some((name, Some(sub)));
            }
            [kind @ ("opt" | "alias"), rest @ ..] => {
                let (cmd, sub) = current.unwrap_or_else(|| malformed(n, line));
                let mut table = tables.commands.get_mut(cmd).expect("current exists");
                if let Some(sub) = sub {
                    table = table.subcommands.get_mut(sub).expect("current exists");
                }
                match (*kind, rest) {
                    ("opt", [short, long, value, negatable]) => {
                        let option = option_line(short, long, value, negatable)
                            .unwrap_or_else(|| malformed(n, line));
                        table.options.push(option);
                    }
                    ("alias", [alias, target]) => table.aliases.push((alias, target)),
                    _ => malformed(n, line),
                }
            }
            _ => malformed(n, line),
        }
    }
    assert!(
        !tables.version.is_empty(),
        "git_options/options.txt: no version line"
    );
    tables
}

fn malformed(n: usize, line: &str) -> ! {
    panic!("git_options/options.txt:{}: malformed line `{line}`", n + 1)
}

fn table_header(
    command: &'static str,
    sub: Option<&'static str>,
    flags: &[&str],
) -> Option<OptionTable> {
    let mut t = OptionTable {
        command,
        sub,
        ..OptionTable::default()
    };
    for f in flags {
        match *f {
            "abbrev" => t.abbrev = true,
            "stop" => t.stop_at_non_option = true,
            "num" => t.number = true,
            "subcommands" => {}
            _ => return None,
        }
    }
    Some(t)
}

fn option_line(short: &str, long: &'static str, value: &str, negatable: &str) -> Option<GitOption> {
    let mut chars = short.chars();
    let short = match (chars.next(), chars.next()) {
        (Some('-'), None) => None,
        (Some(c), None) => Some(c),
        _ => return None,
    };
    Some(GitOption {
        short,
        long: (long != "-").then_some(long),
        value: match value {
            "none" => OptionValue::None,
            "required" => OptionValue::Required,
            "optional" => OptionValue::Optional,
            _ => return None,
        },
        negatable: match negatable {
            "neg" => true,
            "noneg" | "-" => false,
            _ => return None,
        },
    })
}

/// git's default for a command whose subcommand is optional: `git stash -k` is
/// `git stash push -k` (stash's top level knows no options and hands them all over).
fn default_subcommand(command: &str) -> Option<&'static str> {
    (command == "stash").then_some("push")
}

/// An option git acted on, as normalization read it.
#[derive(Debug, Clone)]
pub struct ParsedOption {
    /// The table it was found in.
    pub table: &'static OptionTable,
    /// The option.
    pub option: &'static GitOption,
    /// Spelled with its short name.
    pub short: bool,
    /// git unsets it (`--no-force`; `--verify` for the `no-verify` option).
    pub unset: bool,
    /// Its value, if it took one.
    pub value: Option<String>,
}

impl PartialEq for ParsedOption {
    fn eq(&self, other: &Self) -> bool {
        // Tables and options are static: the same one is the same address.
        std::ptr::eq(self.table, other.table)
            && std::ptr::eq(self.option, other.option)
            && (self.short, self.unset, &self.value) == (other.short, other.unset, &other.value)
    }
}

impl Eq for ParsedOption {}

/// A subcommand's arguments as git reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NormalizedArgs {
    /// The arguments (after the subcommand), rewritten: abbreviations expanded,
    /// bundles split, everything else (values, non-options, `--` and after) as given.
    pub args: Vec<String>,
    /// Every option recognized, in order.
    pub options: Vec<ParsedOption>,
}

/// A long option that abbreviates more than one option: git refuses it ("ambiguous
/// option"), and so does normalization rather than guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbiguousOption {
    /// The option as given (`--fo`).
    pub option: String,
    /// What it could stand for, full spellings (`--force`, `--force-with-lease`).
    pub candidates: Vec<String>,
}

/// Reads `args` (the words after `git … SUBCOMMAND`) as git does; see the module docs.
/// Without a table for the subcommand, the arguments are returned as given.
pub fn normalize_args<S: AsRef<str>>(
    subcommand: &str,
    args: &[S],
) -> Result<NormalizedArgs, AmbiguousOption> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut out = NormalizedArgs::default();
    let Some(mut table) = git_option_table(subcommand) else {
        out.args = args.iter().map(|s| s.to_string()).collect();
        return Ok(out);
    };
    // A command with sub-subcommands reads options until the first word, which names one.
    let mut sub_pending = !table.subcommands.is_empty();
    let mut i = 0;
    while i < args.len() {
        let word = args[i];
        let verbatim_rest = |out: &mut NormalizedArgs| {
            out.args.extend(args[i..].iter().map(|s| s.to_string()));
        };
        if word == "--" || word == "--end-of-options" {
            verbatim_rest(&mut out);
            break;
        }
        if !word.starts_with('-') || word == "-" {
            if sub_pending {
                sub_pending = false;
                if let Some(sub) = table.subcommand(word) {
                    out.args.push(word.to_string());
                    table = sub;
                    i += 1;
                    continue;
                }
                // Not a subcommand: git hands it and the rest to the default mode or fails.
                verbatim_rest(&mut out);
                break;
            }
            if table.stop_at_non_option {
                verbatim_rest(&mut out);
                break;
            }
            out.args.push(word.to_string());
            i += 1;
            continue;
        }
        let next = args.get(i + 1).copied();
        let read = match word.strip_prefix("--") {
            Some(long) => read_long(table, long, next)?,
            None => read_short(table, &word[1..], next),
        };
        match read {
            Read::Unknown if sub_pending => {
                sub_pending = false;
                match default_subcommand(table.command).and_then(|d| table.subcommand(d)) {
                    // Read this word again with the default subcommand's options.
                    Some(default) => table = default,
                    None => {
                        verbatim_rest(&mut out);
                        break;
                    }
                }
            }
            Read::Unknown => {
                out.args.push(word.to_string());
                i += 1;
            }
            Read::Words {
                words,
                options,
                took_next,
            } => {
                out.args.extend(words);
                out.options.extend(options);
                i += 1 + usize::from(took_next);
            }
        }
    }
    Ok(out)
}

/// What one option word reads as.
enum Read {
    /// Not an option of the table (or a spelling git refuses): keep the word as given.
    Unknown,
    /// Normalized words, the options they set, and whether the next argument was
    /// consumed as a value (it is then the last of `words`).
    Words {
        words: Vec<String>,
        options: Vec<ParsedOption>,
        took_next: bool,
    },
}

/// parse-options.c `parse_long_opt` (git 2.47): `arg` is the word without its `--`.
fn read_long(
    table: &'static OptionTable,
    arg: &str,
    next: Option<&str>,
) -> Result<Read, AmbiguousOption> {
    let (name, inline) = match arg.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (arg, None),
    };
    // `--no-x` unsets x; `--no-no-x` is the `no-x` option unset.
    let (unset, no_no, stem) = match name.strip_prefix("no-") {
        Some(rest) => match rest.strip_prefix("no-") {
            Some(rest) => (false, true, rest),
            None => (true, false, rest),
        },
        None => (false, false, name),
    };
    // (option, git's "unset" for it) of every abbreviation seen, in order.
    let mut abbrevs: Vec<(&'static GitOption, bool)> = Vec::new();
    let mut ambiguous = false;
    let mut register = |opt: &'static GitOption, unset: bool| {
        if !table.abbrev {
            return;
        }
        if let Some(&(last, last_unset)) = abbrevs.last() {
            let same = last_unset == unset
                && table.is_alias(last.long.unwrap_or(""), opt.long.unwrap_or(""));
            ambiguous |= !same;
        }
        abbrevs.push((opt, unset));
    };
    let mut found = None;
    for opt in &table.options {
        let Some(long) = opt.long else { continue };
        let (opt_unset, long) = match long.strip_prefix("no-") {
            Some(positive) => (true, positive),
            None if no_no => continue,
            None => (false, long),
        };
        if unset != opt_unset && !opt.negatable {
            continue;
        }
        if stem == long {
            found = Some((opt, unset != opt_unset));
            break;
        }
        if long.starts_with(stem) {
            register(opt, unset != opt_unset);
        }
        // "negated and abbreviated very much": `--n`, `--no`, `--no-`.
        if opt.negatable && "no-".starts_with(arg) {
            register(opt, !opt_unset);
        }
    }
    let spell = |opt: &GitOption, git_unset: bool| {
        let long = opt.long.expect("only long options match");
        let positive = long.strip_prefix("no-").unwrap_or(long);
        // What the user asked for, relative to the positive name.
        let negative = git_unset != long.starts_with("no-");
        format!("--{}{positive}", if negative { "no-" } else { "" })
    };
    let (opt, git_unset) = match found {
        Some(hit) => hit,
        None if ambiguous => {
            let mut candidates: Vec<String> = Vec::new();
            for &(o, u) in &abbrevs {
                let s = spell(o, u);
                if !candidates.contains(&s) {
                    candidates.push(s);
                }
            }
            return Err(AmbiguousOption {
                option: format!("--{name}"),
                candidates,
            });
        }
        None => match abbrevs.last() {
            Some(&hit) => hit,
            None => return Ok(Read::Unknown),
        },
    };
    let mut word = spell(opt, git_unset);
    let mut words = Vec::with_capacity(2);
    let mut took_next = false;
    let value = match inline {
        Some(v) => {
            word.push('=');
            word.push_str(v);
            words.push(word);
            Some(v.to_string())
        }
        None => {
            words.push(word);
            // An unset option takes no value; an optional one only with `=`.
            match (opt.value, git_unset, next) {
                (OptionValue::Required, false, Some(v)) => {
                    took_next = true;
                    words.push(v.to_string());
                    Some(v.to_string())
                }
                _ => None,
            }
        }
    };
    Ok(Read::Words {
        words,
        options: vec![ParsedOption {
            table,
            option: opt,
            short: false,
            unset: git_unset,
            value,
        }],
        took_next,
    })
}

/// parse-options.c `parse_short_opt` and the bundle loop around it (git 2.47):
/// `letters` is the word without its `-`.
fn read_short(table: &'static OptionTable, letters: &str, next: Option<&str>) -> Read {
    let mut words = Vec::new();
    let mut options = Vec::new();
    let mut took_next = false;
    let mut rest = letters;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        let first = rest.len() == letters.len();
        match table.short(c) {
            Some(opt) => {
                let parsed = |value: Option<&str>| ParsedOption {
                    table,
                    option: opt,
                    short: true,
                    unset: false,
                    value: value.map(str::to_string),
                };
                match opt.value {
                    OptionValue::None => {
                        words.push(format!("-{c}"));
                        options.push(parsed(None));
                        rest = after;
                    }
                    // An optional value is only ever attached; keep it so.
                    OptionValue::Optional => {
                        words.push(format!("-{c}{after}"));
                        options.push(parsed((!after.is_empty()).then_some(after)));
                        rest = "";
                    }
                    OptionValue::Required => {
                        words.push(format!("-{c}"));
                        let value = if after.is_empty() {
                            took_next = next.is_some();
                            next
                        } else {
                            Some(after)
                        };
                        words.extend(value.map(str::to_string));
                        options.push(parsed(value));
                        rest = "";
                    }
                }
            }
            None if table.number && c.is_ascii_digit() => {
                let digits = rest
                    .find(|d: char| !d.is_ascii_digit())
                    .unwrap_or(rest.len());
                words.push(format!("-{}", &rest[..digits]));
                rest = &rest[digits..];
            }
            // git refuses a word whose first letter it does not know (or passes it on
            // whole); a later unknown letter ends the bundle: refused, or (commands that
            // pass unknown options on) the rest is kept as one option.
            None if first || table.abbrev => return Read::Unknown,
            None => {
                words.push(format!("-{rest}"));
                rest = "";
            }
        }
        // check_typos: `-force` after a flag `-f` is refused as a misspelt `--force`.
        if first && !rest.is_empty() && looks_like_long_option(table, letters) {
            return Read::Unknown;
        }
    }
    Read::Words {
        words,
        options,
        took_next,
    }
}

fn looks_like_long_option(table: &OptionTable, letters: &str) -> bool {
    letters.len() >= 3
        && (letters.starts_with("no-")
            || table
                .options
                .iter()
                .filter_map(|o| o.long)
                .any(|l| l.starts_with(letters)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sub: &str, args: &str) -> Vec<String> {
        let words: Vec<&str> = args.split_whitespace().collect();
        normalize_args(sub, &words)
            .unwrap_or_else(|e| panic!("{sub} {args}: {e:?}"))
            .args
    }

    #[test]
    fn the_table_is_git_2_47_and_knows_the_common_commands() {
        assert_eq!(git_version(), "2.47.3");
        for cmd in [
            "push", "fetch", "clone", "reset", "clean", "branch", "commit",
        ] {
            let t = git_option_table(cmd).unwrap_or_else(|| panic!("{cmd}"));
            assert!(t.abbrev, "{cmd} abbreviates");
        }
        let push = git_option_table("push").unwrap();
        let force = push.options.iter().find(|o| o.long == Some("force"));
        assert_eq!(force.and_then(|o| o.short), Some('f'));
        assert!(
            !git_option_table("log").unwrap().abbrev,
            "log keeps unknown options"
        );
        assert!(git_option_table("ls-remote").unwrap().stop_at_non_option);
        assert!(git_option_table("stash")
            .unwrap()
            .subcommand("push")
            .is_some());
        assert!(
            git_option_table("diff").is_none(),
            "diff is not parse-options"
        );
    }

    #[test]
    fn subcommand_kinds_come_from_git() {
        assert_eq!(git_subcommand_kind("push"), Some(GitSubcommand::Builtin));
        assert_eq!(git_subcommand_kind("daemon"), Some(GitSubcommand::Program));
        assert_eq!(
            git_subcommand_kind("submodule"),
            Some(GitSubcommand::Script { interpreter: "sh" })
        );
        assert_eq!(
            git_subcommand_kind("send-email"),
            Some(GitSubcommand::Script {
                interpreter: "perl"
            })
        );
        assert_eq!(git_subcommand_kind("st"), None);
        assert_eq!(git_subcommand_kind(""), None);
    }

    #[test]
    fn long_abbreviations_expand_exact_names_stay() {
        assert_eq!(norm("reset", "--har"), ["--hard"]);
        assert_eq!(norm("reset", "--hard HEAD~1"), ["--hard", "HEAD~1"]);
        assert_eq!(norm("branch", "--forc x"), ["--force", "x"]);
        assert_eq!(norm("push", "--delet x"), ["--delete", "x"]);
        assert_eq!(norm("push", "--no-thi"), ["--no-thin"]);
        assert_eq!(
            norm("push", "--verif"),
            ["--verify"],
            "positive of --no-verify"
        );
        assert_eq!(norm("push", "--no-no-verify"), ["--verify"]);
        assert_eq!(norm("push", "--mir"), ["--mirror"]);
        assert_eq!(
            norm("push", "--force-with=main:abc"),
            ["--force-with-lease=main:abc"]
        );
        // A long option git does not know stays as given; git rejects it.
        assert_eq!(norm("push", "--frobnicate"), ["--frobnicate"]);
        // Aliases of one option are not ambiguous with each other.
        assert_eq!(norm("clone", "--recurs x"), ["--recursive", "x"]);
    }

    #[test]
    fn ambiguous_abbreviations_are_refused_with_candidates() {
        let err = normalize_args("push", &["--fo"]).unwrap_err();
        assert_eq!(err.option, "--fo");
        assert!(err.candidates.contains(&"--force".to_string()), "{err:?}");
        assert!(
            err.candidates.contains(&"--follow-tags".to_string()),
            "{err:?}"
        );
        // git 2.47 refuses `push --forc` too.
        let err = normalize_args("push", &["--forc"]).unwrap_err();
        assert_eq!(
            err.candidates,
            ["--force", "--force-with-lease", "--force-if-includes"]
        );
        // `--n` could be any `--no-…`.
        assert!(normalize_args("reset", &["--n"]).is_err());
        // An exact name wins over the longer names it prefixes.
        assert_eq!(norm("push", "--force"), ["--force"]);
    }

    #[test]
    fn commands_that_keep_unknown_options_do_not_abbreviate() {
        assert_eq!(norm("log", "--sourc"), ["--sourc"]);
        assert_eq!(norm("cherry-pick", "--ff"), ["--ff"]);
    }

    #[test]
    fn short_bundles_split_as_git_reads_them() {
        assert_eq!(norm("clean", "-fdx"), ["-f", "-d", "-x"]);
        assert_eq!(norm("push", "-fu origin"), ["-f", "-u", "origin"]);
        assert_eq!(norm("branch", "-Df x"), ["-D", "-f", "x"]);
        assert_eq!(norm("commit", "-mfoo"), ["-m", "foo"]);
        assert_eq!(norm("commit", "-am fix"), ["-a", "-m", "fix"]);
        // Once a letter takes a value, the rest of the word is the value.
        assert_eq!(norm("commit", "-amfd"), ["-a", "-m", "fd"]);
        // An optional value stays attached (`-u no` would make `no` a pathspec).
        assert_eq!(norm("status", "-suno"), ["-s", "-uno"]);
        // Unknown letters: git refuses the word; it stays as given.
        assert_eq!(norm("clean", "-fZ"), ["-fZ"]);
        assert_eq!(norm("clean", "-Zf"), ["-Zf"]);
        // `-force` is refused by git as a misspelt `--force`.
        assert_eq!(norm("push", "-force"), ["-force"]);
    }

    #[test]
    fn values_are_never_read_as_options() {
        assert_eq!(norm("commit", "-m -fd"), ["-m", "-fd"]);
        assert_eq!(norm("commit", "--message --har"), ["--message", "--har"]);
        assert_eq!(norm("commit", "--mess -fd"), ["--message", "-fd"]);
        // A value attached with `=` stays attached.
        assert_eq!(norm("commit", "--mess=-fd"), ["--message=-fd"]);
        // A negated option takes no value.
        assert_eq!(norm("commit", "--no-mess -fd"), ["--no-message", "-fd"]);
    }

    #[test]
    fn separators_numbers_and_non_options_stay() {
        assert_eq!(norm("reset", "-- --hard"), ["--", "--hard"]);
        assert_eq!(
            norm("reset", "--end-of-options --har"),
            ["--end-of-options", "--har"]
        );
        assert_eq!(norm("log", "-3 --oneline"), ["-3", "--oneline"]);
        assert_eq!(norm("grep", "-n3 x"), ["-n", "-3", "x"]);
        assert_eq!(norm("add", "- x"), ["-", "x"]);
        // ls-remote stops at its first non-option: the rest are patterns.
        assert_eq!(norm("ls-remote", "origin --upl=x"), ["origin", "--upl=x"]);
        assert_eq!(norm("frobnicate", "--har -fd"), ["--har", "-fd"]);
    }

    #[test]
    fn sub_subcommands_use_their_own_options() {
        assert_eq!(
            norm("stash", "push --keep-ind -qm x"),
            ["push", "--keep-index", "-q", "-m", "x"]
        );
        assert_eq!(
            norm("stash", "--keep-ind"),
            ["--keep-index"],
            "stash defaults to push"
        );
        assert_eq!(
            norm("stash", "-q drop"),
            ["-q", "drop"],
            "a push of pathspec `drop`"
        );
        assert_eq!(
            norm("remote", "-v add -f x y"),
            ["-v", "add", "-f", "x", "y"]
        );
        assert_eq!(
            norm("worktree", "remove --forc x"),
            ["remove", "--force", "x"]
        );
        assert_eq!(norm("stash", "clear"), ["clear"]);
    }

    #[test]
    fn parsed_options_carry_their_values() {
        let n = normalize_args("clone", &["-uevil", "src", "dst"]).unwrap();
        assert_eq!(n.args, ["-u", "evil", "src", "dst"]);
        assert_eq!(n.options.len(), 1);
        assert_eq!(n.options[0].option.long, Some("upload-pack"));
        assert_eq!(n.options[0].value.as_deref(), Some("evil"));
        let n = normalize_args("fetch", &["-u", "origin"]).unwrap();
        assert_eq!(n.options[0].option.long, Some("update-head-ok"));
        assert_eq!(n.options[0].value, None);
    }

    #[test]
    fn archive_reads_exec_exactly() {
        let n = normalize_args("archive", &["--remote=x", "--exec", "evil", "HEAD"]).unwrap();
        assert_eq!(n.args, ["--remote=x", "--exec", "evil", "HEAD"]);
        assert_eq!(n.options[1].value.as_deref(), Some("evil"));
        // Never abbreviated in archive's first parse.
        assert_eq!(norm("archive", "--exe=x"), ["--exe=x"]);
    }

    /// Differential check against the real git: every prefix of every long option of
    /// some commands, `--PREFIX=x --help-all` run in a scratch repository. git's answer
    /// (ambiguous, unknown, "option `NAME' takes no value", or usage) must agree with
    /// normalization. Needs the table's git version on PATH (this machine kind has it
    /// under /usr/local, and the guest images ship the same version); another version
    /// fails the test, naming both: regenerate the table with `generate.sh`.
    #[test]
    fn agrees_with_git() {
        use std::process::Command;
        let version = Command::new("git").arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        assert_eq!(
            version,
            format!("git version {}", git_version()),
            "the git on PATH is not the table's version: regenerate proto/src/git_options/options.txt with generate.sh"
        );
        let dir = std::env::temp_dir().join(format!("airlock-git-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(args)
                .current_dir(&dir)
                .env("HOME", &dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_ALLOW_PROTOCOL", "file")
                .env("LC_ALL", "C")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
        };
        git(&["init", "-q"]);
        let mut failures = Vec::new();
        let mut checked = 0;
        for cmd in [
            "push",
            "reset",
            "clean",
            "branch",
            "commit",
            "checkout",
            "restore",
            "fetch",
            "clone",
            "status",
            "switch",
            "rebase",
            "pull",
            "tag",
            "add",
            "rm",
            "merge",
            "ls-remote",
            "send-pack",
            "worktree add",
            "stash push",
        ] {
            let words: Vec<&str> = cmd.split(' ').collect();
            let mut table = git_option_table(words[0]).unwrap();
            if let Some(sub) = words.get(1) {
                table = table.subcommand(sub).unwrap();
            }
            let mut names: Vec<String> = Vec::new();
            for o in &table.options {
                let Some(long) = o.long else { continue };
                names.push(long.to_string());
                if o.negatable {
                    names.push(match long.strip_prefix("no-") {
                        Some(p) => p.to_string(),
                        None => format!("no-{long}"),
                    });
                }
            }
            let mut prefixes: Vec<String> = names
                .iter()
                .flat_map(|n| (1..=n.len()).map(move |i| n[..i].to_string()))
                .collect();
            prefixes.sort();
            prefixes.dedup();
            for p in prefixes {
                let arg = format!("--{p}=x");
                let mut args: Vec<&str> = words[1..].to_vec();
                args.push(&arg);
                let ours = normalize_args(words[0], &args);
                let mut argv = words.clone();
                argv.extend([arg.as_str(), "--help-all"]);
                let theirs = git(&argv);
                checked += 1;
                let ok = if theirs.contains("ambiguous option") {
                    ours.is_err()
                } else if theirs.contains("unknown option") {
                    matches!(&ours, Ok(n) if n.options.is_empty())
                } else if let Some(rest) = theirs
                    .split("option `")
                    .nth(1)
                    .filter(|_| theirs.contains("takes no value"))
                {
                    let name = rest.split('\'').next().unwrap();
                    let name = name.strip_prefix("no-no-").unwrap_or(name);
                    matches!(&ours, Ok(n) if n.args.last().map(String::as_str) == Some(&format!("--{name}=x")))
                } else {
                    matches!(&ours, Ok(n) if n.options.len() == 1 && n.options[0].option.value != OptionValue::None)
                };
                if !ok {
                    let first = theirs.lines().next().unwrap_or("").to_string();
                    failures.push(format!(
                        "git {cmd} {arg}: git says `{first}`, we read {ours:?}"
                    ));
                }
            }
        }
        // Short bundles: two or three letters, known or not (`Z`). A letter that takes a
        // value gets one attached, so `--help-all` is never read as a value.
        for cmd in [
            "push", "reset", "clean", "branch", "commit", "checkout", "restore", "fetch", "status",
            "tag", "rm",
        ] {
            let table = git_option_table(cmd).unwrap();
            let mut letters: Vec<char> = table.options.iter().filter_map(|o| o.short).collect();
            letters.push('Z');
            for a in &letters {
                for b in &letters {
                    for word in [
                        format!("-{a}{b}"),
                        format!("-{a}{b}Z"),
                        format!("-{a}{b}{a}"),
                    ] {
                        let word = match table.short(word.chars().last().unwrap()) {
                            Some(o) if o.value == OptionValue::Required => format!("{word}v"),
                            _ => word,
                        };
                        let ours = normalize_args(cmd, &[word.as_str()]).unwrap();
                        let theirs = git(&[cmd, &word, "--help-all"]);
                        checked += 1;
                        if theirs.contains("cannot be used together") {
                            continue;
                        }
                        let refused =
                            theirs.contains("unknown switch") || theirs.contains("did you mean");
                        if refused != ours.options.is_empty() {
                            let first = theirs.lines().next().unwrap_or("").to_string();
                            failures.push(format!(
                                "git {cmd} {word}: git says `{first}`, we read {:?}",
                                ours.args
                            ));
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("{checked} spellings checked against git");
        assert!(
            failures.is_empty(),
            "{} of {checked} differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "--",
                    "-",
                    "--end-of-options",
                    "--har",
                    "--hard",
                    "--forc",
                    "--no-verif",
                    "--fo",
                    "-fd",
                    "-mfoo",
                    "-m",
                    "-uno",
                    "-fu",
                    "-Df",
                    "-3",
                    "origin",
                    "x",
                    "push",
                    "add",
                    "drop",
                    "--mess",
                    "--message=x",
                    "-amx",
                    "--keep-ind",
                    "--upload=y",
                    "-u",
                    "-force",
                    "--no-no-verify",
                ])
                .prop_map(String::from),
                "-[a-zA-Z0-9]{1,4}",
                "--[a-z-]{1,6}(=[a-z]{0,2})?",
            ]
        }

        proptest! {
            #[test]
            fn normalizing_twice_is_normalizing_once(
                sub in prop::sample::select(vec![
                    "push", "reset", "clean", "branch", "commit", "stash", "remote", "status",
                    "grep", "log", "clone", "fetch", "ls-remote", "checkout", "restore", "archive",
                ]),
                args in prop::collection::vec(word(), 0..6),
            ) {
                if let Ok(once) = normalize_args(sub, &args) {
                    let twice = normalize_args(sub, &once.args).expect("a normalized form is accepted");
                    prop_assert_eq!(&twice.args, &once.args);
                    prop_assert_eq!(twice.options, once.options);
                }
            }
        }
    }
}

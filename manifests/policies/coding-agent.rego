# Rego twin of coding-agent.toml: the same ordered rules, ids, decisions and reasons,
# evaluated by airlock's Rego engine (regorus, in process).
#
# tests/cases/engine-agreement.toml holds capability -> expected decision cases that
# both this file and coding-agent.toml must pass (tests/engine_agreement.rs), so the two
# cannot drift apart silently. Change both together.
#
# Input: one capability (see README "Rego engine"). Output: data.airlock.decision =
# {"verdict", "rule_id", "reason"}. First matching rule wins; unmatched resources
# requests are denied ("no-ceiling"); anything else unmatched gets the default.
#
# Argument patterns are regular expressions over the arguments joined as
# "\x1f" + arg for each arg (so [] and [""] differ), because Rego has no recursion:
#   `push **` -> ^\x1fpush(\x1f[^\x1f]*)*$    `*` -> \x1f[^\x1f]*    `**` -> (\x1f[^\x1f]*)*
# An fs glob ending in `/**` is listed twice, with and without the suffix, because the
# native engine lets `dir/**` match `dir` itself.
package airlock

import rego.v1

default_verdict := "deny"

rules := [
	{"id": "home-secrets", "decision": "deny", "reason": "credentials and keys in home directories are never shared with an agent", "kind": "fs", "globs": ["{/home/*,/root}/{.ssh,.aws,.gnupg,.kube,.docker,.azure,.config/gcloud,.config/gh,.cargo/credentials*,.netrc,.git-credentials,.npmrc,.pypirc}/**", "{/home/*,/root}/{.ssh,.aws,.gnupg,.kube,.docker,.azure,.config/gcloud,.config/gh,.cargo/credentials*,.netrc,.git-credentials,.npmrc,.pypirc}"], "mode": "any"},
	{"id": "host-system", "decision": "deny", "reason": "host system directories are never shared; the guest image carries its own system", "kind": "fs", "globs": ["/{etc,boot,dev,proc,sys,run,var,usr,bin,sbin,lib,lib64,opt}/**", "/{etc,boot,dev,proc,sys,run,var,usr,bin,sbin,lib,lib64,opt}"], "mode": "any"},
	{"id": "workspace", "decision": "allow", "reason": "the project the agent works on", "kind": "fs", "globs": ["{/home/*,/root}/{work,src,projects}/**", "{/home/*,/root}/{work,src,projects}"], "mode": "any"},
	{"id": "home-other", "decision": "ask", "reason": "other files in a home directory may be private: a human decides", "kind": "fs", "globs": ["{/home/*,/root}/**", "{/home/*,/root}"], "mode": "any"},
	{"id": "metadata-service", "decision": "deny", "reason": "cloud metadata endpoints hand out instance credentials", "kind": "net", "host": "metadata.google.internal", "ports": [1, 65535]},
	{"id": "internal-names", "decision": "deny", "reason": "internal and link-local names are not the agent's to reach", "kind": "net", "host_under": "internal", "ports": [1, 65535]},
	{"id": "crates-io", "decision": "allow", "reason": "Rust package registry", "kind": "net", "host": "crates.io", "ports": [443, 443]},
	{"id": "crates-io-cdn", "decision": "allow", "reason": "Rust package registry downloads and index", "kind": "net", "host_under": "crates.io", "ports": [443, 443]},
	{"id": "pypi", "decision": "allow", "reason": "Python package index", "kind": "net", "host": "pypi.org", "ports": [443, 443]},
	{"id": "pypi-files", "decision": "allow", "reason": "Python package downloads", "kind": "net", "host": "files.pythonhosted.org", "ports": [443, 443]},
	{"id": "npm", "decision": "allow", "reason": "JavaScript package registry", "kind": "net", "host": "registry.npmjs.org", "ports": [443, 443]},
	{"id": "forge-https", "decision": "allow", "reason": "git forge over HTTPS (clone and fetch; pushes are decided per invocation)", "kind": "net", "host": "github.com", "ports": [443, 443]},
	{"id": "forge-content", "decision": "allow", "reason": "git forge raw content and release downloads", "kind": "net", "host_under": "githubusercontent.com", "ports": [443, 443]},
	{"id": "forge-ssh", "decision": "ask", "reason": "ssh to the forge authenticates as a person: a human decides", "kind": "net", "host": "github.com", "ports": [22, 22]},
	{"id": "other-https", "decision": "ask", "reason": "other HTTPS hosts: a human decides per host", "kind": "net", "host_any": true, "ports": [443, 443]},
	{"id": "git-config-identity", "decision": "allow", "reason": "author identity is inert configuration", "kind": "tool", "program": "git", "config": "user.*"},
	{"id": "git-config-color", "decision": "allow", "reason": "output colouring is inert configuration", "kind": "tool", "program": "git", "config": "color.*"},
	{"id": "git-config-other", "decision": "deny", "reason": "command-line git configuration and options naming a program (core.pager, core.sshCommand, alias.*, hooks, --upload-pack, --receive-pack, --exec) can make git run programs; they are not granted", "kind": "tool", "program": "git", "config": "*"},
	{"id": "git-config-command", "decision": "deny", "reason": "`git config` can persist settings that run programs (core.pager, alias.*, core.hooksPath)", "kind": "tool", "program": "git", "argv_regex": "^\\x1fconfig(\\x1f[^\\x1f]*)*$"},
	{"id": "git-reset-hard", "decision": "deny", "reason": "`git reset --hard` discards uncommitted work; use `git stash` or `git reset --soft`", "kind": "tool", "program": "git", "argv_regex": "^\\x1freset(\\x1f[^\\x1f]*)*\\x1f\\-\\-hard(\\x1f[^\\x1f]*)*$"},
	{"id": "git-clean", "decision": "deny", "reason": "`git clean` deletes untracked files for good", "kind": "tool", "program": "git", "argv_regex": "^\\x1fclean(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-force", "decision": "deny", "reason": "force-pushing rewrites shared history; push normally or ask a person to force", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-\\-force(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-force-short", "decision": "deny", "reason": "force-pushing rewrites shared history; push normally or ask a person to force", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-f(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-force-lease", "decision": "deny", "reason": "force-pushing rewrites shared history; push normally or ask a person to force", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-\\-force\\-with\\-lease[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-force-refspec", "decision": "deny", "reason": "a `+` refspec force-pushes that ref; push normally or ask a person to force", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\+[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-delete", "decision": "deny", "reason": "deleting branches or tags on the forge loses shared work; ask a person", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-\\-delete(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-delete-short", "decision": "deny", "reason": "deleting branches or tags on the forge loses shared work; ask a person", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-d(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-delete-refspec", "decision": "deny", "reason": "an empty-source refspec (`:branch`) deletes that branch on the forge; ask a person", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f:[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-mirror", "decision": "deny", "reason": "`push --mirror` makes the forge an exact copy of this repository: refs it lacks are deleted there; ask a person", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-\\-mirror(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push-prune", "decision": "deny", "reason": "`push --prune` deletes branches on the forge that have no local counterpart; ask a person", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*\\x1f\\-\\-prune(\\x1f[^\\x1f]*)*$"},
	{"id": "git-push", "decision": "ask", "reason": "pushing publishes code under someone's name: a human decides", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpush(\\x1f[^\\x1f]*)*$"},
	{"id": "git-commit", "decision": "allow", "reason": "recording work in the local repository", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcommit(\\x1f[^\\x1f]*)*$"},
	{"id": "git-status", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1fstatus(\\x1f[^\\x1f]*)*$"},
	{"id": "git-diff", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1fdiff(\\x1f[^\\x1f]*)*$"},
	{"id": "git-log", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1flog(\\x1f[^\\x1f]*)*$"},
	{"id": "git-show", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1fshow(\\x1f[^\\x1f]*)*$"},
	{"id": "git-add", "decision": "allow", "reason": "stage changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fadd(\\x1f[^\\x1f]*)*$"},
	{"id": "git-restore-worktree", "decision": "deny", "reason": "`git restore --worktree` overwrites local changes in the working tree; only `git restore --staged` (unstage) is granted", "kind": "tool", "program": "git", "argv_regex": "^\\x1frestore(\\x1f[^\\x1f]*)*\\x1f\\-\\-worktree(\\x1f[^\\x1f]*)*$"},
	{"id": "git-restore-worktree-short", "decision": "deny", "reason": "`git restore -W` overwrites local changes in the working tree; only `git restore --staged` (unstage) is granted", "kind": "tool", "program": "git", "argv_regex": "^\\x1frestore(\\x1f[^\\x1f]*)*\\x1f\\-W(\\x1f[^\\x1f]*)*$"},
	{"id": "git-restore-staged", "decision": "allow", "reason": "unstage files (the working tree is left alone)", "kind": "tool", "program": "git", "argv_regex": "^\\x1frestore\\x1f\\-\\-staged(\\x1f[^\\x1f]*)*$"},
	{"id": "git-restore-staged-short", "decision": "allow", "reason": "unstage files (the working tree is left alone)", "kind": "tool", "program": "git", "argv_regex": "^\\x1frestore\\x1f\\-S(\\x1f[^\\x1f]*)*$"},
	{"id": "git-restore-discard", "decision": "deny", "reason": "`git restore` without `--staged` first overwrites local changes in the working tree; use `git stash`, or `git restore --staged` to unstage", "kind": "tool", "program": "git", "argv_regex": "^\\x1frestore(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch-discard", "decision": "deny", "reason": "`switch --discard-changes` (or `--force`, `-f`) throws away local changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*\\x1f\\-\\-discard\\-changes(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch-force", "decision": "deny", "reason": "`switch --discard-changes` (or `--force`, `-f`) throws away local changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*\\x1f\\-\\-force(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch-force-short", "decision": "deny", "reason": "`switch --discard-changes` (or `--force`, `-f`) throws away local changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*\\x1f\\-f(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch-force-create", "decision": "deny", "reason": "`switch -C` (`--force-create`) resets an existing branch to another commit: its own commits can be lost; `switch -c` creates a new one", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*\\x1f\\-C(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch-force-create-long", "decision": "deny", "reason": "`switch -C` (`--force-create`) resets an existing branch to another commit: its own commits can be lost; `switch -c` creates a new one", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*\\x1f\\-\\-force\\-create(\\x1f[^\\x1f]*)*$"},
	{"id": "git-switch", "decision": "allow", "reason": "change branches", "kind": "tool", "program": "git", "argv_regex": "^\\x1fswitch(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout-force", "decision": "deny", "reason": "`checkout --force` (`-f`) throws away local changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout(\\x1f[^\\x1f]*)*\\x1f\\-\\-force(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout-force-short", "decision": "deny", "reason": "`checkout --force` (`-f`) throws away local changes", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout(\\x1f[^\\x1f]*)*\\x1f\\-f(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout-paths", "decision": "deny", "reason": "`checkout -- <path>` overwrites the file with the committed one: its local changes are lost; use `git stash`", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout(\\x1f[^\\x1f]*)*\\x1f\\-\\-(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout-force-create", "decision": "deny", "reason": "`checkout -B` resets an existing branch to another commit: its own commits can be lost; `git switch -c` creates a new one", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout(\\x1f[^\\x1f]*)*\\x1f\\-B(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout-new-branch", "decision": "allow", "reason": "create a branch and change to it", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout\\x1f\\-b(\\x1f[^\\x1f]*)*$"},
	{"id": "git-checkout", "decision": "deny", "reason": "`git checkout <name>` overwrites files when the name is a path (`git checkout .` discards every local change); use `git switch <branch>` to change branches, `git switch -c` to create one", "kind": "tool", "program": "git", "argv_regex": "^\\x1fcheckout(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch-delete-force", "decision": "deny", "reason": "`branch -D` deletes a branch whether or not it is merged: its commits can be lost; `branch -d` deletes merged branches", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*\\x1f\\-D(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch-force", "decision": "deny", "reason": "`branch --force` (`-f`) deletes unmerged branches (with `-d`) or moves existing ones: commits can be lost", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*\\x1f\\-\\-force(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch-force-short", "decision": "deny", "reason": "`branch --force` (`-f`) deletes unmerged branches (with `-d`) or moves existing ones: commits can be lost", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*\\x1f\\-f(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch-force-move", "decision": "deny", "reason": "`branch -M` (`-C`) renames (copies) a branch over an existing one, which loses that branch's commits and reflog; use `-m` (`-c`)", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*\\x1f\\-M(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch-force-copy", "decision": "deny", "reason": "`branch -M` (`-C`) renames (copies) a branch over an existing one, which loses that branch's commits and reflog; use `-m` (`-c`)", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*\\x1f\\-C(\\x1f[^\\x1f]*)*$"},
	{"id": "git-branch", "decision": "allow", "reason": "manage local branches", "kind": "tool", "program": "git", "argv_regex": "^\\x1fbranch(\\x1f[^\\x1f]*)*$"},
	{"id": "git-stash-clear", "decision": "deny", "reason": "`stash clear` drops every stash entry; the work in them is lost", "kind": "tool", "program": "git", "argv_regex": "^\\x1fstash\\x1fclear(\\x1f[^\\x1f]*)*$"},
	{"id": "git-stash-drop", "decision": "deny", "reason": "`stash drop` deletes a stash entry; the work in it is lost (`stash pop` applies it first)", "kind": "tool", "program": "git", "argv_regex": "^\\x1fstash\\x1fdrop(\\x1f[^\\x1f]*)*$"},
	{"id": "git-stash", "decision": "allow", "reason": "set work aside", "kind": "tool", "program": "git", "argv_regex": "^\\x1fstash(\\x1f[^\\x1f]*)*$"},
	{"id": "git-fetch", "decision": "allow", "reason": "download from the forge", "kind": "tool", "program": "git", "argv_regex": "^\\x1ffetch(\\x1f[^\\x1f]*)*$"},
	{"id": "git-pull", "decision": "allow", "reason": "download and integrate", "kind": "tool", "program": "git", "argv_regex": "^\\x1fpull(\\x1f[^\\x1f]*)*$"},
	{"id": "git-merge", "decision": "allow", "reason": "integrate local branches", "kind": "tool", "program": "git", "argv_regex": "^\\x1fmerge(\\x1f[^\\x1f]*)*$"},
	{"id": "git-rev-parse", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1frev\\-parse(\\x1f[^\\x1f]*)*$"},
	{"id": "git-ls-files", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1fls\\-files(\\x1f[^\\x1f]*)*$"},
	{"id": "git-blame", "decision": "allow", "reason": "read-only inspection", "kind": "tool", "program": "git", "argv_regex": "^\\x1fblame(\\x1f[^\\x1f]*)*$"},
	{"id": "no-shells", "decision": "deny", "reason": "a shell as a tool grants every program; ask for the specific tool you need", "kind": "tool", "program": "sh", "argv_regex": "^(\\x1f[^\\x1f]*)*$"},
	{"id": "no-bash", "decision": "deny", "reason": "a shell as a tool grants every program; ask for the specific tool you need", "kind": "tool", "program": "bash", "argv_regex": "^(\\x1f[^\\x1f]*)*$"},
	{"id": "no-python", "decision": "deny", "reason": "an interpreter as a tool grants arbitrary code; ask for the specific tool you need", "kind": "tool", "program": "python3", "argv_regex": "^(\\x1f[^\\x1f]*)*$"},
	{"id": "no-node", "decision": "deny", "reason": "an interpreter as a tool grants arbitrary code; ask for the specific tool you need", "kind": "tool", "program": "node", "argv_regex": "^(\\x1f[^\\x1f]*)*$"},
	{"id": "ripgrep-preprocessor", "decision": "deny", "reason": "`rg --pre` runs a program on every file searched, and `--search-zip` (`-z`) starts decompressors: ask for the program itself instead", "kind": "tool", "program": "rg", "argv_regex": "^(\\x1f[^\\x1f]*)*\\x1f--pre[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "ripgrep-search-zip", "decision": "deny", "reason": "`rg --search-zip` (`-z`) starts decompressors by name for compressed files: decompress with a granted tool instead", "kind": "tool", "program": "rg", "argv_regex": "^(\\x1f[^\\x1f]*)*\\x1f--search-zip(\\x1f[^\\x1f]*)*$"},
	{"id": "ripgrep-search-zip-short", "decision": "deny", "reason": "`rg -z` starts decompressors by name for compressed files: decompress with a granted tool instead (in other bundles such as `-nz`, rg's profile leaves the decompressors to the broker, which does not grant them)", "kind": "tool", "program": "rg", "argv_regex": "^(\\x1f[^\\x1f]*)*\\x1f-z[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "ripgrep-hostname-bin", "decision": "deny", "reason": "`rg --hostname-bin` runs the program it names (for hyperlinks): ask for the program itself instead", "kind": "tool", "program": "rg", "argv_regex": "^(\\x1f[^\\x1f]*)*\\x1f--hostname-bin[^\\x1f]*(\\x1f[^\\x1f]*)*$"},
	{"id": "ripgrep", "decision": "allow", "reason": "searching the workspace", "kind": "tool", "program": "rg", "argv_regex": "^(\\x1f[^\\x1f]*)*$"},
	{"id": "standard-session", "decision": "allow", "reason": "fits a standard session", "kind": "resources", "ceilings": {"vcpus": 2, "memory_mib": 2048, "disk_mib": 4096, "pids": 512, "wall_time_secs": 1800, "net_connections": 64, "net_mib": 2048}},
	{"id": "large-session", "decision": "ask", "reason": "a large session costs real money: a human decides", "kind": "resources", "ceilings": {"vcpus": 8, "memory_mib": 16384, "disk_mib": 32768, "pids": 4096, "wall_time_secs": 14400, "net_connections": 256, "net_mib": 16384}},
]

# ---- matching -----------------------------------------------------------------------

mode_ok(rule, cap) if rule.mode == "any"

mode_ok(rule, cap) if rule.mode == cap.mode

matches(rule, cap) if {
	rule.kind == "fs"
	cap.kind == "fs"
	mode_ok(rule, cap)
	some g in rule.globs
	glob.match(g, ["/"], cap.path)
}

host_ok(rule, cap) if rule.host == cap.host

host_ok(rule, cap) if {
	suffix := concat("", [".", rule.host_under])
	endswith(cap.host, suffix)
	count(cap.host) > count(suffix)
}

host_ok(rule, cap) if rule.host_any

matches(rule, cap) if {
	rule.kind == "net"
	cap.kind == "net"
	host_ok(rule, cap)
	cap.port >= rule.ports[0]
	cap.port <= rule.ports[1]
}

joined_args(cap) := concat("", [sprintf("\u001f%s", [a]) | some a in cap.args])

matches(rule, cap) if {
	rule.kind == "tool"
	cap.kind == "tool"
	rule.program == cap.program
	rule.argv_regex
	regex.match(rule.argv_regex, joined_args(cap))
}

# Config key patterns: exact key, `prefix.*` (one or more further parts), or `*`.
config_ok(pattern, key) if pattern == "*"

config_ok(pattern, key) if {
	not contains(pattern, "*")
	pattern == key
}

config_ok(pattern, key) if {
	endswith(pattern, ".*")
	prefix := trim_suffix(pattern, "*")
	startswith(key, prefix)
	count(key) > count(prefix)
}

matches(rule, cap) if {
	rule.kind == "tool"
	cap.kind == "tool_config"
	rule.program == cap.program
	config_ok(rule.config, cap.key)
}

within(rule, cap, name) if not rule.ceilings[name]

within(rule, cap, name) if cap[name] <= rule.ceilings[name]

matches(rule, cap) if {
	rule.kind == "resources"
	cap.kind == "resources"
	every name in ["vcpus", "memory_mib", "disk_mib", "pids", "wall_time_secs", "net_connections", "net_mib"] {
		within(rule, cap, name)
	}
}

# ---- first match wins ---------------------------------------------------------------

hits := [i | some i, rule in rules; matches(rule, input)]

decision := {"verdict": rules[hits[0]].decision, "rule_id": rules[hits[0]].id, "reason": rules[hits[0]].reason} if {
	count(hits) > 0
}

decision := {
	"verdict": "deny",
	"rule_id": "no-ceiling",
	"reason": "request is above every resources ceiling in the policy",
} if {
	count(hits) == 0
	input.kind == "resources"
}

decision := {
	"verdict": default_verdict,
	"rule_id": "default",
	"reason": "no rule matches; the policy default applies",
} if {
	count(hits) == 0
	input.kind != "resources"
}

#!/bin/sh
# Regenerates options.txt, the table proto/src/git_options.rs normalizes git arguments
# with, from the git on PATH (or $GIT). Run it with the git version the guest images
# ship, from anywhere:
#
#     proto/src/git_options/generate.sh > proto/src/git_options/options.txt
#
# Everything comes from git itself: the command list (`--list-cmds`), each parse-options
# command's options (`--git-completion-helper-all` and `--help-all`, which print the
# same option array), and two behaviours probed per command:
#   abbrev  git accepts unambiguous prefixes of long options. Probed with
#           GIT_TEST_DISALLOW_ABBREVIATED_OPTIONS=1, under which git dies on any
#           abbreviation it would have accepted (commands parsing with
#           PARSE_OPT_KEEP_UNKNOWN_OPT, like log and cherry-pick, never abbreviate).
#   stop    options end at the first non-option word (PARSE_OPT_STOP_AT_NON_OPTION):
#           `git CMD zzz --help-all` runs the command instead of printing the usage.
# Probes run in a scratch repository with a scratch HOME, no system config, no network
# protocols but file, and stdin from /dev/null. `--help-all` always comes last (not
# `-h`: show-ref reads it as `--head`), so a command that parses its options before
# acting (all but the `stop` ones) only prints its usage.
set -eu

GIT=${GIT:-git}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
export HOME="$tmp/home" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
	GIT_ALLOW_PROTOCOL=file GIT_TERMINAL_PROMPT=0 LC_ALL=C LANG=C \
	GIT_AUTHOR_NAME=gen GIT_AUTHOR_EMAIL=gen@invalid \
	GIT_COMMITTER_NAME=gen GIT_COMMITTER_EMAIL=gen@invalid
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE
mkdir -p "$HOME"
exec_path=$("$GIT" --exec-path)
version=$("$GIT" --version | sed 's/^git version //')

"$GIT" init -q "$tmp/repo"
cd "$tmp/repo"
"$GIT" commit -q --allow-empty -m init
# Some sparse-checkout subcommands refuse to print their usage outside a sparse checkout.
"$GIT" sparse-checkout set --cone >/dev/null

run() { timeout 10 "$GIT" "$@" </dev/null 2>&1 || true; }

# Parses `--help-all` ($1) against `--git-completion-helper-all` ($2) into opt/alias
# lines. Fails (exit 1) when the two disagree: then the command does not take its
# options from one parse-options array (diff, rev-list, ...), and has no table.
parse_options() {
	awk -v comp="$2" -v cmd="$3" '
	function rtrim(s) { sub(/ +$/, "", s); return s }
	BEGIN {
		n = split(comp, words, " ")
		for (i = 1; i <= n; i++) if (words[i] ~ /^--./) {
			w = substr(words[i], 3)
			if (w ~ /=$/) { w = substr(w, 1, length(w) - 1); comp_value[w] = 1 }
			comp_long[w] = 1
		}
		nopt = 0; pending = 0
	}
	# The first help line of an option whose spec filled the line.
	pending && /^                          [^ ]/ {
		help[nopt] = substr($0, 27); pending = 0; next
	}
	{ pending = 0 }
	/^    -[^ ]/ {
		line = $0
		spec = line; text = ""
		# Help starts in column 27 when the spec is shorter than 26 characters, else on
		# the next line.
		if (length(line) > 26 && substr(line, 26, 1) == " " && substr(line, 27, 1) != " ") {
			spec = rtrim(substr(line, 1, 26)); text = substr(line, 27)
		}
		s = substr(spec, 5)
		short = "-"; long = "-"; neg = "noneg"; arg = "none"
		if (s ~ /^-NUM/) { num = 1; next }
		if (s ~ /^-[^-]/) {
			short = substr(s, 2, 1); s = substr(s, 3)
			if (s ~ /^, /) s = substr(s, 3)
		}
		if (s ~ /^--/) {
			s = substr(s, 3)
			if (s ~ /^\[no-\]/) { neg = "neg"; s = substr(s, 6) }
			if (!match(s, /^[A-Za-z0-9][A-Za-z0-9._-]*/)) { print "unparsed: " line > "/dev/stderr"; bad = 1; next }
			long = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
		}
		if (s ~ /^\[/) arg = "optional"
		else if (s ~ /^ ./) arg = "required"
		else if (s != "") { print "unparsed: " line > "/dev/stderr"; bad = 1; next }
		# A spec of 26+ characters with a space in column 26: the rest is its value.
		if (long != "-" && (long in comp_value) && arg == "none" && text != "") {
			arg = "required"; text = ""
		}
		nopt++
		shorts[nopt] = short; longs[nopt] = long; negs[nopt] = neg; args[nopt] = arg
		help[nopt] = text
		if (length(spec) == length(rtrim(line))) pending = 1
	}
	END {
		if (bad) exit 1
		for (i = 1; i <= nopt; i++) {
			if (help[i] !~ /^opposite of --no-/) own[longs[i]] = 1
			if (help[i] ~ /^opposite of --no-/) {
				positive[longs[i]] = 1; drop[i] = 1
			}
			if (help[i] ~ /^alias of --/) {
				t = help[i]; sub(/^alias of --/, "", t); sub(/ .*/, "", t)
				alias[longs[i]] = t
			}
		}
		for (i = 1; i <= nopt; i++) {
			if (drop[i]) continue
			l = longs[i]
			if (l != "-") {
				if (!(l in comp_long)) { print cmd ": --" l " is in --help-all only" > "/dev/stderr"; exit 1 }
				seen[l] = 1
				# `--X` for a `no-X` option: usage prints "opposite of --no-X" unless X is
				# an option of its own (then the completion list cannot tell either).
				if (l ~ /^no-/ && (positive[substr(l, 4)] || ((substr(l, 4) in comp_long) && !(substr(l, 4) in own)))) negs[i] = "neg"
				if ((l in comp_value) && args[i] == "none") {
					print cmd ": --" l " takes a value but --help-all shows none" > "/dev/stderr"; exit 1
				}
			}
			print "opt " shorts[i] " " l " " args[i] " " (l == "-" ? "-" : negs[i])
		}
		for (i = 1; i <= nopt; i++) if (longs[i] in alias) print "alias " longs[i] " " alias[longs[i]]
		# Every long option the completion lists must be accounted for: its own line,
		# or the positive form of a `no-` option.
		for (l in comp_long) if (!(l in seen) && !(l in positive) && !(("no-" l) in seen) && l !~ /^no-/) {
			print cmd ": --" l " is in the completion list only" > "/dev/stderr"; exit 1
		}
		if (num) print "num"
	}' "$1"
}

# Emits the `cmd`/`sub` header and option lines for `git $*`, or nothing.
table() {
	header=$1; shift
	if ! comp=$(timeout 10 "$GIT" "$@" --git-completion-helper-all </dev/null 2>/dev/null); then
		echo "skipped (no completion list): git $*" >&2
		return
	fi
	comp=$(printf '%s\n' "$comp" | head -n 1)
	help=$(run "$@" --help-all)
	case $help in usage:*) ;; *) echo "skipped (no parse-options usage): git $*" >&2; return ;; esac
	printf '%s\n' "$help" >"$tmp/help"
	if ! opts=$(parse_options "$tmp/help" "$comp" "$*"); then
		echo "skipped (help and completion disagree): git $*" >&2
		return
	fi
	flags=""
	case $opts in *num) flags="$flags num"; opts=$(printf '%s\n' "$opts" | sed '$d') ;; esac
	# abbrev: a proper prefix of some long option that is not itself an option.
	probe=$(printf '%s\n' "$opts" | awk '
		$1 == "opt" && $3 != "-" { names[$3] = 1; order[++n] = $3 }
		END { for (i = 1; i <= n; i++) { p = substr(order[i], 1, length(order[i]) - 1)
			if (length(p) >= 2 && !(p in names) && !(("no-" p) in names)) { print p; exit } } }')
	if [ -n "$probe" ]; then
		case $(GIT_TEST_DISALLOW_ABBREVIATED_OPTIONS=1 run "$@" "--$probe" --help-all) in
		*"disallowed abbreviated or ambiguous option"*) flags="$flags abbrev" ;;
		esac
	fi
	case $(run "$@" zzz-airlock-probe --help-all) in usage:*) ;; *) flags="$flags stop" ;; esac
	echo "$header$flags"
	[ -z "$opts" ] || printf '%s\n' "$opts"
}

cat <<HEADER
# git's subcommands and their options, read by proto/src/git_options.rs.
# Generated by generate.sh from git $version; do not edit by hand.
#
# kind NAME builtin | program | script INTERPRETER   (how git runs \`git NAME\`)
# cmd NAME [abbrev] [stop] [num] [subcommands]         (a builtin's option table)
# sub NAME SUB [abbrev] [stop] [num]                   (a sub-subcommand's table)
# opt SHORT LONG ARG NEG   SHORT/LONG \`-\` if none; ARG none | required | optional;
#                          NEG neg (\`--no-\` form accepted) | noneg | - (short only)
# alias LONG TARGET        LONG is another name of TARGET (not ambiguous with it)
version $version
HEADER

builtins=$("$GIT" --list-cmds=builtins | sort -u)
for name in $( ("$GIT" --list-cmds=builtins; "$GIT" --list-cmds=main) | sort -u); do
	if printf '%s\n' "$builtins" | grep -qx -- "$name"; then
		echo "kind $name builtin"
		continue
	fi
	file="$exec_path/git-$name"
	case $(file -b "$file") in
	*ELF*) echo "kind $name program" ;;
	*script*)
		interpreter=$(head -n 1 "$file" | sed 's/^#! *//; s/ .*//; s,.*/,,')
		[ "$interpreter" = env ] && interpreter=$(head -n 1 "$file" | awk '{print $2}')
		echo "kind $name script $interpreter" ;;
	*) echo "skipped (neither program nor script): $file" >&2 ;;
	esac
done

for name in $builtins; do
	case $name in
	# Internal helpers (`--` in the name) are not commands an agent runs, and some of
	# them start daemons. bisect's subcommands read their own arguments (`bisect run`
	# runs them).
	*--*) continue ;;
	esac
	# Subcommands are the completion words without dashes; a command that does not
	# parse options prints its usage instead and fails.
	subs=""
	if comp=$(timeout 10 "$GIT" "$name" --git-completion-helper-all </dev/null 2>/dev/null); then
		subs=$(printf '%s\n' "$comp" | head -n 1 | tr ' ' '\n' | grep -v '^--' | grep -v '^$' || true)
	fi
	if [ -n "$subs" ] && [ "$name" != bisect ]; then
		table "cmd $name" "$name" | sed '1s/$/ subcommands/'
		for sub in $subs; do
			table "sub $name $sub" "$name" "$sub"
		done
	else
		table "cmd $name" "$name"
	fi
done

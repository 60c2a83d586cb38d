#!/usr/bin/env bash
# --help, man/kvmcdp.1 and the README's command table must describe the same
# subcommands with the same long options.  The binary's --help is the source
# of truth for what exists; the man page and the README are what a sysadmin
# reads, and a flag missing from one of them is a flag nobody finds (or one
# that is documented but refused).  Nothing here lists flags: every set is
# read from the three places, so adding a flag to all three is all it takes.
#
# Where each place keeps a command's flags:
#   --help   the option lines of `kvmcdp SUB [SUB2] --help` (without --help
#            itself); subcommands from the Subcommands: sections.
#   man      the `.It Cm SUB [SUB2] ...` synopsis lines of the DESCRIPTION
#            list (a command may have several, like serve); every `Fl \-x`
#            on them.  The text under a synopsis may only mention flags the
#            command has; `.Cm other Fl \-x` on a line refers to another
#            command and is not checked.
#   README   the first cell of the rows of the table under "## Commands"
#            whose code starts with `kvmcdp SUB [SUB2]`; `a\|b` in the
#            command words makes the row apply to both a and b, so every
#            flag it shows must exist for both.
# A short option (`-o`) in the man page or README stands for its long name
# when --help pairs them (`-o,--output`).
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
: "${KVMCDP_SOURCE_DIR:?set KVMCDP_SOURCE_DIR}"
man_page=$KVMCDP_SOURCE_DIR/man/kvmcdp.1
readme=$KVMCDP_SOURCE_DIR/README.md

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Each extractor writes lines "SUB[ SUB2]<TAB>FLAG" (FLAG empty: the command
# exists there) into $tmp/{help,man,readme}, and "SUB<TAB>-x<TAB>--long"
# aliases into $tmp/alias.

help_section() {  # help_section SECTION: the indented lines of that section
  awk -v want="$1:" '$0 == want {on = 1; next} /^[^ ]/ {on = 0} on'
}

walk_help() {  # walk_help [SUB...]: record this command and its children
  local text subs
  text=$("$KVMCDP" "$@" --help) || { echo "FAIL: kvmcdp $* --help exits non-zero" >&2; exit 1; }
  subs=$(help_section Subcommands <<<"$text" | sed -n 's/^  \([a-z][a-z0-9-]*\) .*/\1/p')
  if [ -n "$subs" ]; then
    local s
    for s in $subs; do walk_help "$@" "$s"; done
    return
  fi
  local path="$*"
  printf '%s\t\n' "$path" >>"$tmp/help"
  # Every option line, in Options: or in any option group's section.
  perl -ne 'print "$1\n" if /^  (?:-[A-Za-z0-9],)?(--[a-z0-9][a-z0-9-]*)/' <<<"$text" |
    grep -vx -- --help | sed "s|^|$path\t|" >>"$tmp/help" || true
  perl -ne 'print "$1\t$2\n" if /^  (-[A-Za-z0-9]),(--[a-z0-9][a-z0-9-]*)/' <<<"$text" |
    grep -v $'^-h\t' | sed "s|^|$path\t|" >>"$tmp/alias" || true
}
: >"$tmp/help"
: >"$tmp/alias"
walk_help   # the top level itself has subcommands, so it records only them

# The man page: synopsis flags as "SUB<TAB>FLAG", text flags as
# "SUB<TAB>FLAG<TAB>text" (checked only against --help).
perl -ne '
  BEGIN { $depth = 0; $in = 0; $cmd = "" }
  if (/^\.Sh /) { $in = /^\.Sh DESCRIPTION\b/; $depth = 0; $cmd = ""; next }
  next unless $in;
  if (/^\.Bl\b/) { $depth++; next }
  if (/^\.El\b/) { $depth--; $cmd = "" if $depth == 0; next }
  my @t = split " ";
  my $synopsis = 0;
  if ($depth == 1 && /^\.It Cm /) {
    shift @t; shift @t;
    my @words;
    while (@t && $t[0] =~ /^[a-z][a-z0-9-]*$/) { push @words, shift @t }
    $cmd = join " ", @words;
    print "$cmd\t\n";
    $synopsis = 1;
  }
  next if $cmd eq "";
  my $other = 0;  # after a .Cm on a text line: another command s flag
  for (my $i = 0; $i < @t; $i++) {
    if (!$synopsis && ($t[$i] eq "Cm" || $t[$i] eq ".Cm")) { $other = 1; next }
    next unless ($t[$i] eq "Fl" || $t[$i] eq ".Fl") && $i + 1 < @t;
    next if $other;
    my $f = $t[$i + 1];
    $f =~ s/\\-/-/g;
    $f =~ s/[^A-Za-z0-9-].*$//;
    # Long options and one-letter short ones, not "Fl drive" (QEMU option).
    next unless $f =~ /^-[a-z0-9][a-z0-9-]*$/ || $f =~ /^[A-Za-z0-9]$/;
    print $synopsis ? "$cmd\t-$f\n" : "$cmd\t-$f\ttext\n";
  }
' "$man_page" >"$tmp/man.all"
awk -F'\t' 'NF < 3' "$tmp/man.all" >"$tmp/man"
awk -F'\t' 'NF == 3 {print $1 "\t" $2}' "$tmp/man.all" >"$tmp/man.text"

# The README: rows of the table under "## Commands".
perl -ne '
  if (/^## /) { $in = /^## Commands\s*$/; next }
  next unless $in && /^\|\s*`kvmcdp /;
  my @cells = split /(?<!\\)\|/;
  my $cell = $cells[1];
  $cell =~ s/\\\|/|/g;
  my ($code) = $cell =~ /`kvmcdp ([^`]*)`/;
  my @t = split " ", $code;
  my @words;
  while (@t && $t[0] =~ /^[a-z][a-z0-9|-]*$/) { push @words, shift @t }
  # Expand "a|b" in any word into one path per alternative.
  my @paths = ("");
  for my $w (@words) {
    @paths = map { my $p = $_; map { $p eq "" ? $_ : "$p $_" } split /\|/, $w } @paths;
  }
  my %flags;
  $flags{$1} = 1 while $cell =~ /(?<![A-Za-z0-9-])(--?[A-Za-z0-9][a-z0-9-]*)/g;
  for my $p (@paths) {
    print "$p\t\n";
    print "$p\t$_\n" for sort keys %flags;
  }
' "$readme" >"$tmp/readme"

# Short options stand for their long names where --help pairs them.
for f in man man.text readme; do
  awk -F'\t' 'FNR == NR {long[$1 "\t" $2] = $3; next}
              ($1 "\t" $2) in long {$2 = long[$1 "\t" $2]} {print $1 "\t" $2}' OFS='\t' \
    "$tmp/alias" "$tmp/$f" | sort -u >"$tmp/$f.n"
done
sort -u "$tmp/help" >"$tmp/help.n"

problems=0
complain() { echo "FAIL: $*" >&2; problems=$((problems + 1)); }
where_name() {
  case $1 in
    help) echo "--help" ;; man) echo "man/kvmcdp.1" ;; readme) echo "README.md's command table" ;;
  esac
}
describe() {  # describe CMD FLAG
  if [ -z "$2" ]; then echo "subcommand '$1'"; else echo "kvmcdp $1 $2"; fi
}

# Every command and every flag found anywhere must be in all three places.
sort -u "$tmp/help.n" "$tmp/man.n" "$tmp/readme.n" >"$tmp/all"
while IFS=$'\t' read -r cmd flag; do
  key=$(printf '%s\t%s' "$cmd" "$flag")
  has=() lacks=()
  for src in help man readme; do
    if grep -qxF -- "$key" "$tmp/$src.n"; then has+=("$(where_name $src)"); else lacks+=("$(where_name $src)"); fi
  done
  [ ${#lacks[@]} -eq 0 ] && continue
  # A command missing somewhere is reported once, not once per flag.
  if [ -n "$flag" ]; then
    cmd_key=$(printf '%s\t' "$cmd")
    skip=0
    for src in help man readme; do
      grep -qxF -- "$cmd_key" "$tmp/$src.n" || skip=1
    done
    [ $skip -eq 1 ] && continue
  fi
  complain "$(describe "$cmd" "$flag") is in $(IFS=,; echo "${has[*]}" | sed 's/,/ and /g') but missing from $(IFS=,; echo "${lacks[*]}" | sed 's/,/ and /g')"
done <"$tmp/all"

# The man page's text may only speak of flags its command has.
while IFS=$'\t' read -r cmd flag; do
  grep -qxF -- "$(printf '%s\t' "$cmd")" "$tmp/help.n" || continue
  grep -qxF -- "$(printf '%s\t%s' "$cmd" "$flag")" "$tmp/help.n" ||
    complain "man/kvmcdp.1's text for '$cmd' mentions $flag, which 'kvmcdp $cmd --help' does not have (another command's flag: write .Cm other Fl ...)"
done <"$tmp/man.text.n"

# A quoting macro swallows the rest of its line, so ".Pq Ql a , Ql b"
# renders as nested quotes: (‘a, ‘b’’).
if nested=$(mandoc -Tutf8 "$man_page" | sed 's/\x08.//g' | grep -n "’’\|‘‘"); then
  complain "man/kvmcdp.1 renders nested quotes (one .Ql per line): $nested"
fi

# The extraction itself must have found something, or the test proves nothing.
for src in help man readme; do
  n=$(grep -c $'\t-' "$tmp/$src.n" || true)
  [ "$n" -ge 20 ] || complain "found only $n flags in $(where_name $src): has its format changed?"
done

[ "$problems" -eq 0 ] || { echo "docs_agree: $problems problem(s)" >&2; exit 1; }
echo "docs_agree: ok ($(grep -c $'\t-' "$tmp/help.n") flags of $(grep -c $'\t$' "$tmp/help.n") commands agree)"

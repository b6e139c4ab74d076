# Turns the option list of `pikod --help` into man(7) markup, so pikod(8) lists exactly
# the options the binary takes. Input: the lines after "Options (flags override the
# file):" up to the "Exit codes" line. A line "Title:" starts a subsection; a line
# "  --flag ARG   text" is an option, its text on the same line (after 2+ spaces) or on
# the next, more indented line.
function esc(s) {
	gsub(/\\/, "\\e", s)
	gsub(/-/, "\\-", s)
	return s
}
function flush() {
	if (opt != "") {
		print ".TP"
		print ".B " esc(opt) (arg != "" ? " \\fI" esc(arg) "\\fR" : "")
		t = esc(text)
		if (t ~ /^[.']/) t = "\\&" t
		print t
	}
	opt = ""; arg = ""; text = ""
}
/^Options \(flags override the file\):/ { on = 1; next }
/^Exit codes:/ { flush(); on = 0 }
!on { next }
/^[A-Z][^:]*:$/ { flush(); sub(/:$/, ""); print ".SS " esc($0); next }
/^  -/ {
	flush()
	line = $0
	sub(/^  /, "", line)
	n = index(line, "   ")
	head = n ? substr(line, 1, n - 1) : line
	text = n ? substr(line, n) : ""
	sub(/^ +/, "", text)
	sub(/ +$/, "", head)
	# "-c, --config FILE": keep the flags together, the argument apart
	m = split(head, w, " ")
	opt = w[1]; arg = ""
	for (i = 2; i <= m; i++) {
		if (w[i - 1] ~ /,$/) opt = opt " " w[i]
		else arg = arg (arg == "" ? "" : " ") w[i]
	}
	next
}
/^   +[^ ]/ { line = $0; sub(/^ +/, "", line); text = text (text == "" ? "" : " ") line; next }

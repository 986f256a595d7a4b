#!/usr/bin/env python3
"""Write Tests/LoRAGraphTests/Fixtures/python-re-table.json: Python's own answers for module patterns.

For every pattern p and module name n the table holds what PEFT 0.21.2 computes with Python's `re`:
  fullmatch: re.fullmatch(p, n) is not None                  (string target_modules, match_target_against_key)
  suffix:    re.match(rf"(.*\\.)?({p})$", n) is not None      (rank_pattern / alpha_pattern keys, get_pattern_key)
or, when Python refuses to compile the pattern for that rule, the error message it raises.
`unsupported` lists patterns Python accepts that lora-tool refuses on purpose, with the construct the
refusal must name. Needs only the standard library; CI reads the committed output.
Run from the repository root:  python3 scripts/make-regex-table.py
"""
import json, os, re, sys, warnings

warnings.simplefilter("ignore")  # FutureWarning "Possible nested set" for [[:alpha:]] is expected
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests/LoRAGraphTests/Fixtures/python-re-table.json")

NAMES = [
    "model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.k_proj", "model.layers.3.mlp.down_proj", "model.layers.3.mlp.xdown_proj",
    "q_proj", "lm_head", "model.embed_tokens", "transformer.h.1.attn.c_attn",
    "model.layers.0.self_attn.q_proj\n",                 # $ also matches before a final newline
    "model.layers.\u0663.mlp.down_proj",                  # ARABIC-INDIC DIGIT THREE: \d and \w in Python
    "\u6a21\u578b.\u5c42.0.q_proj", "\u00e9t\u00e9.q_proj",  # CJK and accented letters: \w
    "a]", "l]", "a", "ab", "aab", "qq_proj", "q{2}", "model.layers.0.self_attn.q{2}", "x.q_projq_proj",
    "a-b", "a\tb", "a b", "a\u00a0b", "a.b", "", "{", "_", "x{}", "aaa", "aaaa",
]

PATTERNS = [
    # plain names and dots
    "q_proj", "model.layers.0.self_attn.q_proj", "lm_head", "down_proj", r"model\.layers\.0\..*", r".*\.q_proj",
    r".*", r".+", "", r"a\.b", "a.b", r".*\..*\..*",
    # classes
    r"[qv]_proj", r".*\.[qkv]_proj", r"[^q]_proj", r".*[^.]_proj", r"[]a]+", r"[a-]+", r"[-a]+", r"[\w.]+",
    r"[\d]+", r"[^\d.]+", r"[a\-z]+", r"[\]]", r"[.]*q_proj", r"[^]]", r"[\s]", r"[^\S]", r"[\t ]", r"[a-c]+",
    r"[\x61-\x62]+", r"[--/]+", r"[\b]", r"[\\]", r"[a^]", r"[\W\d]", r"[q{}2]+",
    # POSIX-looking classes: Python reads "[[:alpha:]" as a set, then a literal "]"
    r"[[:alpha:]]", r"[[:alpha:]]+", r".*[[:alpha:]]", r"[[:alpha:]", r"[[:digit:]]+",
    # \d \w \s, Unicode
    r".*\.\d+\..*", r"model\.layers\.\d+\.self_attn\.q_proj", r"\d+", r".*\.(\d)\..*", r"\D+", r"\w+",
    r"[\w.]+\.\w+", r"\W", r".*\s.*", r"\S+", r"\w+\.\w+\.0\.q_proj", r".*\.\d\.mlp\..*", r"\w\.q_proj",
    r"\w+\.q_proj", r"a\sb", r"a\Sb", r"\w\W\w",
    # alternation
    r".*\.(q|v)_proj", r"q_proj|v_proj", r"(q|k|v)_proj", r"lm_head|.*\.down_proj", r"a|", r"|", r"a|ab|aab",
    r".*(q_proj|v_proj)", r"(?:k|q)_proj",
    # lookahead / lookbehind, positive and negative
    r"(?<=self_attn\.)q_proj", r".*(?<=self_attn\.)q_proj", r".*(?<!self_attn\.)q_proj", r"(?!.*mlp).*_proj",
    r"(?=.*\.0\.).*", r".*(?=q)q_proj", r"(?<=\.)\w+", r".*(?<=\d\.)\w+_proj", r"(?<!^)q_proj", r".*(?<!\.)q_proj",
    r".*(?<=(?:at|ml)p\.)down_proj", r".*(?<=(?=\.)\.)q_proj", r".*(?<=(?<!x)\.)q_proj", r"(?=a)\w+",
    r"(?!a)\w+", r".*(?<=a)", r"(?<=)a", r"(?=)a", r"(?=a)*a", r"(?!)", r"a(?=b)", r"a(?!b)b",
    r".*(?<=self_attn\.q)_proj", r"(?<![0-9])\w+", r"(?<=(?:\b)*a)b", r".*(?<=\.\d\.)mlp.*",
    # anchors
    r"^q_proj$", r".*q_proj$", r"q_proj\Z", r".*\bq_proj", r".*\Bq_proj", r"\Aq_proj", r"q_proj\n?", r"^.*$",
    r"\b.*\b", r"\B", r"$", r"^", r".*$\n", r".*q_proj$\n?", r"model.*q_proj$", r"(?:^|.*\.)q_proj$",
    r"a\b", r"\ba", r"\Ba", r".*_\B.*", r"(?:^)*q_proj", r"\w+$",
    # quantifier braces, literal or not
    r"q{2}_proj", r".*\.q{", r"q{,}_proj", r"x{}", r".*q{2}", r"q{1,2}_proj", r"q{,1}_proj", r"a{0}",
    r".*\{2\}", r".*q\{2}", r"model.layers.0.self_attn.q{2}", r"q{x}", r"{", r"x{2,a}", r"a{2,}",
    r"a{,2}", r"a{1}b", r"\{", r"a{ 2}", r"a{2 }", r"a{02}", r"q\{2\}", r"{2}", r"x{",
    # lazy quantifiers
    r".*?\.q_proj", r"(.*?)\.(\d+?)\..*", r"q??_proj", r".+?", r"a{1,3}?", r"a*?b", r"a+?", r"(?:a|b)*?",
    # nested groups
    r"((model)\.(layers))\.((\d+)\.(self_attn|mlp))\.((q|down)_proj)", r"(?:(?:a|b)*c)*", r"(?P<layer>\d+)",
    r".*\.(?P<idx>\d+)\.(?:self_attn|mlp)\..*", r"((a)|(ab))+", r"(a(b(c)?)?)?", r"()", r"(()|a)*", r"(a*)+",
    # escapes
    r"q\_proj", r"a\tb", r"a\x20b", r"a\u0020b", r"a\040b", r"a\ b", r"q\-proj", r"\x61", r"\141", r"\0",
    r"a\U00000020b", r"\u00e9t\u00e9\.q_proj", r"\]", r"\}", r"a\/b",
    # rejected by Python
    r"\q", r"[", r"(", r")", r"a**", r"*a", r"x{2,1}", r"(?<=a*)b", r"(?<=a|bc)d", r"[z-a]", r"\8", r"(?P<1a>x)",
    r"(?P<a>x)(?P<a>y)", r"[\d-z]", "\\", r"a{4294967295}", r"(?", r"(?<x)", r"(?Px)", r"^*", r"\x4", r"\u12",
    r"[a", r"(?i", r"b(?i)a", r"\Z*", r"(?#unterminated", r"a++b+*", r"(?<!a+)b", r"(a)\2", r"\1(a)", r"(a\1)",
    r"[\A]", r"\c", r"[\8]", r"a)", r"(?z)", r"(?-i)a", r"(?P=x)", r"\U00110000", r"(?<=a{1,2})b", r"[\Z]",
    r"a(?x)",
]

UNSUPPORTED = [
    (r"(?i)q_proj", "inline flags"), (r"(?i:q)_proj", "scoped inline flags"), (r"(a)\1", "backreference"),
    (r"(?P<x>a)(?P=x)", "backreference"), (r"(a)?(?(1)b|c)", "conditional"), (r"(?>a)b", "atomic group"),
    (r"a*+b", "possessive quantifier"), (r"a(?#c)b", "comment"), (r"\N{LATIN SMALL LETTER A}", "named character"),
    (r"(?x)a b", "inline flags"), (r"(a{1000}){1000}", "NFA states"), (r"((a{100}){100}){100}", "NFA states"),
    (r"(a)(?<=\1)", "backreference"), (r"(?s).*", "inline flags"), (r"(?a:\w)", "scoped inline flags"),
]

# Hostile patterns on long names. Python's backtracking takes exponential time on some of these, so the
# long-name answers come from an equivalent pattern (checked equal to the hostile one on short names).
# A long name is written [unit, count, tail] in the table: unit * count + tail.
HOSTILE = [
    (r"(.*.*)*X", r"[^\n]*X", [["a", 5000, ""], ["a", 5000, "X"], ["b", 20000, "\n"], ["x.", 4000, "X\n"]]),
    (r"(a|a)*b", r"a*b", [["a", 5000, ""], ["a", 5000, "b"], ["a", 20000, "c"]]),
    (r"(a*)*b", r"a*b", [["a", 5000, ""], ["a", 5000, "b"], ["a", 20000, "!"]]),
    (r"(a+)+b", r"a+b", [["a", 5000, ""], ["a", 5000, "b"]]),
    (r"(\w*)*X", r"\w*X", [["a", 5000, ""], ["a", 5000, "X"], ["a.", 3000, "X"]]),
    (r"(a|aa)*c", r"a*c", [["a", 5000, ""], ["a", 5000, "c"]]),
]


def answers(compile_pattern, names, mode):
    try:
        rx = compile_pattern()
    except (re.error, OverflowError, ValueError, RecursionError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    f = rx.fullmatch if mode == "full" else rx.match
    return {"answers": "".join("1" if f(n) is not None else "0" for n in names)}


def row(p, names=None):
    r = {"pattern": p}
    if names is not None:
        r["names"] = names
    ns = NAMES if names is None else names
    r["fullmatch"] = answers(lambda: re.compile(p), ns, "full")
    r["suffix"] = answers(lambda: re.compile(rf"(.*\.)?({p})$"), ns, "match")
    return r


def main():
    short = ["", "a", "aa", "ab", "aab", "aaab", "aX", "X", "ba", "aaac", "ac", "\nX", "a\nX", "aaaaaaaaaaaab"]
    cases = [row(p) for p in dict.fromkeys(PATTERNS)]
    for hostile, equivalent, long_names in HOSTILE:
        for rule, mode in ((lambda p: p, "full"), (lambda p: rf"(.*\.)?({p})$", "match")):
            a = answers(lambda: re.compile(rule(hostile)), short, mode)
            b = answers(lambda: re.compile(rule(equivalent)), short, mode)
            assert a == b, (hostile, equivalent, a, b)
        cases.append(row(hostile, short))
        names = [unit * count + tail for unit, count, tail in long_names]
        r = {"pattern": hostile, "long_names": long_names, "answered_via": equivalent}
        r["fullmatch"] = answers(lambda: re.compile(equivalent), names, "full")
        r["suffix"] = answers(lambda: re.compile(rf"(.*\.)?({equivalent})$"), names, "match")
        cases.append(r)
    unsupported = []
    for p, construct in UNSUPPORTED:
        re.compile(p)  # Python accepts every one of these
        unsupported.append({"pattern": p, "construct": construct,
                            "suffix_python_error": answers(lambda: re.compile(rf"(.*\.)?({p})$"), [], "match").get("error")})
    table = {
        "generated_by": "scripts/make-regex-table.py",
        "python": sys.version.split()[0],
        "unicode": __import__("unicodedata").unidata_version,
        "rules": {"fullmatch": "re.fullmatch(p, name)", "suffix": "re.match(rf\"(.*\\.)?({p})$\", name)"},
        "names": NAMES,
        "cases": cases,
        "unsupported": unsupported,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(table, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} patterns x names, {len(unsupported)} unsupported")


if __name__ == "__main__":
    main()

import Foundation
import SafeTensors

/// A byte-level BPE `tokenizer.json` (GPT-2, Llama 3, Qwen2 and most recent models), able to encode
/// text as Hugging Face `tokenizers` does with `add_special_tokens=True`: what llama.cpp's converter
/// hashes to name a tokenizer's pre-tokenizer (`GGUFPreTokenizer`).
///
/// Steps, each as `tokenizers` defines it: the normalizer (none, NFC, NFKC, or a sequence of them);
/// the pre-tokenizers (`Split` with a regex or string pattern and the `Isolated` or `Removed`
/// behaviour, `ByteLevel` with or without its GPT-2 regex and prefix space, `Digits`, or a sequence);
/// each piece's UTF-8 bytes mapped to GPT-2's printable alphabet; BPE (a whole piece found in the
/// vocabulary is one token when `ignore_merges`; otherwise the adjacent pair of lowest merge rank is
/// merged, leftmost first, until none is left); the post-processor's special tokens
/// (`TemplateProcessing` single template, `ByteLevel` adds none, or a sequence).
///
/// Refused (`Unsupported`, naming the component): other normalizers, pre-tokenizers, split
/// behaviours, models, post-processors, BPE options that change the pieces (dropout, subword
/// prefixes/suffixes, byte fallback), and text that contains one of the tokenizer's added tokens
/// (their extraction rules are not reproduced).
struct ByteLevelBPE {
    struct Unsupported: Error, Sendable {
        var detail: String
    }

    enum PreTokenizer {
        case split(PreTokenizerRegex, removed: Bool)
        case splitString([Unicode.Scalar], removed: Bool)
        case byteLevel(regex: PreTokenizerRegex?, addPrefixSpace: Bool)
        case digits(individually: Bool)
    }

    let vocabulary: [String: Int]
    let ranks: [String: Int]
    let ignoreMerges: Bool
    let normalizers: [String]
    let preTokenizers: [PreTokenizer]
    /// Ids the single-sequence template puts before and after the text.
    let prefix: [Int], suffix: [Int]
    let addedTokens: [String]

    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    /// - Throws: `Unsupported` naming what this encoder does not reproduce.
    init(tokenizer: JSONValue) throws {
        let model = tokenizer["model"]
        guard model?["type"]?.stringValue == "BPE" else { throw Unsupported(detail: "model type \(model?["type"]?.stringValue ?? "missing")") }
        for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix"] where (model?[key] ?? .null) != .null {
            throw Unsupported(detail: "BPE \(key)")
        }
        if model?["byte_fallback"]?.boolValue == true { throw Unsupported(detail: "BPE byte_fallback") }
        guard let vocab = model?["vocab"]?.objectMembers else { throw Unsupported(detail: "model.vocab") }
        var vocabulary: [String: Int] = [:]
        for (token, id) in vocab {
            guard let id = id.intValue else { throw Unsupported(detail: "model.vocab '\(token)'") }
            vocabulary[token] = id
        }
        var ranks: [String: Int] = [:]
        for (rank, merge) in (model?["merges"]?.arrayValue ?? []).enumerated() {
            let pair: (String, String)
            if let s = merge.stringValue {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw Unsupported(detail: "merge '\(s)'") }
                pair = (String(parts[0]), String(parts[1]))
            } else if let a = merge.arrayValue, a.count == 2, let x = a[0].stringValue, let y = a[1].stringValue {
                pair = (x, y)
            } else { throw Unsupported(detail: "a merge that is neither \"a b\" nor [a, b]") }
            let key = pair.0 + "\u{0}" + pair.1
            if ranks[key] == nil { ranks[key] = rank }
        }
        self.vocabulary = vocabulary
        self.ranks = ranks
        ignoreMerges = model?["ignore_merges"]?.boolValue ?? false

        normalizers = try ByteLevelBPE.flatten(tokenizer["normalizer"], list: "normalizers").map { n in
            let t = n["type"]?.stringValue ?? ""
            guard ["NFC", "NFKC", "NFD", "NFKD"].contains(t) else { throw Unsupported(detail: "normalizer \(t)") }
            return t
        }
        preTokenizers = try ByteLevelBPE.flatten(tokenizer["pre_tokenizer"], list: "pretokenizers").map(ByteLevelBPE.preTokenizer)
        var prefix: [Int] = [], suffix: [Int] = []
        for p in try ByteLevelBPE.flatten(tokenizer["post_processor"], list: "processors") {
            switch p["type"]?.stringValue {
            case "ByteLevel": break
            case "TemplateProcessing":
                let single = p["single"]?.arrayValue ?? []
                guard let a = single.firstIndex(where: { $0["Sequence"] != nil }) else { throw Unsupported(detail: "a TemplateProcessing without its sequence") }
                func ids(_ items: ArraySlice<JSONValue>) throws -> [Int] {
                    try items.flatMap { item -> [Int] in
                        guard let name = item["SpecialToken"]?["id"]?.stringValue,
                              let ids = p["special_tokens"]?[name]?["ids"]?.arrayValue?.compactMap(\.intValue) else {
                            throw Unsupported(detail: "TemplateProcessing item \(item)")
                        }
                        return ids
                    }
                }
                prefix += try ids(single[..<a])
                suffix = try ids(single[(a + 1)...]) + suffix
            case let t: throw Unsupported(detail: "post-processor \(t ?? "without a type")")
            }
        }
        self.prefix = prefix
        self.suffix = suffix
        addedTokens = (tokenizer["added_tokens"]?.arrayValue ?? []).compactMap { $0["content"]?.stringValue }
    }

    /// A component and, when it is a `Sequence`, its members (a null component: none).
    private static func flatten(_ v: JSONValue?, list: String) throws -> [JSONValue] {
        guard let v, v != .null else { return [] }
        if v["type"]?.stringValue == "Sequence" { return try (v[list]?.arrayValue ?? []).flatMap { try flatten($0, list: list) } }
        return [v]
    }

    private static func preTokenizer(_ p: JSONValue) throws -> PreTokenizer {
        switch p["type"]?.stringValue {
        case "Split":
            guard p["invert"]?.boolValue != true else { throw Unsupported(detail: "Split with invert") }
            let behavior = p["behavior"]?.stringValue ?? ""
            guard behavior == "Isolated" || behavior == "Removed" else { throw Unsupported(detail: "Split behavior \(behavior)") }
            if let r = p["pattern"]?["Regex"]?.stringValue {
                do { return .split(try PreTokenizerRegex(r), removed: behavior == "Removed") } catch let e as PreTokenizerRegex.Unsupported {
                    throw Unsupported(detail: "Split regex: \(e.detail)")
                }
            }
            if let s = p["pattern"]?["String"]?.stringValue { return .splitString(Array(s.unicodeScalars), removed: behavior == "Removed") }
            throw Unsupported(detail: "Split without a pattern")
        case "ByteLevel":
            let regex = p["use_regex"]?.boolValue ?? true
            return .byteLevel(regex: regex ? try PreTokenizerRegex(gpt2Pattern) : nil, addPrefixSpace: p["add_prefix_space"]?.boolValue ?? true)
        case "Digits":
            return .digits(individually: p["individual_digits"]?.boolValue ?? false)
        case let t:
            throw Unsupported(detail: "pre-tokenizer \(t ?? "without a type")")
        }
    }

    /// The token ids of `text`, as `tokenizer.encode(text)` returns them.
    func encode(_ text: String) throws -> [Int] {
        if let t = addedTokens.first(where: { !$0.isEmpty && text.contains($0) }) {
            throw Unsupported(detail: "text containing the added token '\(t)'")
        }
        var normalized = text
        for n in normalizers {
            switch n {
            case "NFC": normalized = normalized.precomposedStringWithCanonicalMapping
            case "NFKC": normalized = normalized.precomposedStringWithCompatibilityMapping
            case "NFD": normalized = normalized.decomposedStringWithCanonicalMapping
            default: normalized = normalized.decomposedStringWithCompatibilityMapping
            }
        }
        var pieces: [[Unicode.Scalar]] = [Array(normalized.unicodeScalars)]
        var byteLevel = false
        for p in preTokenizers {
            pieces = pieces.flatMap { piece -> [[Unicode.Scalar]] in
                switch p {
                case let .split(regex, removed):
                    return regex.splitPieces(piece).filter { !removed || !$0.isMatch }.map { Array(piece[$0.range]) }
                case let .splitString(s, removed):
                    return ByteLevelBPE.splitOn(s, piece, removed: removed)
                case let .byteLevel(regex, addPrefixSpace):
                    var piece = piece
                    if addPrefixSpace && piece.first != " " { piece.insert(" ", at: 0) }
                    return regex.map { r in r.splitPieces(piece).map { Array(piece[$0.range]) } } ?? [piece]
                case let .digits(individually):
                    return ByteLevelBPE.splitDigits(piece, individually: individually)
                }
            }
            if case .byteLevel = p { byteLevel = true }
        }
        guard byteLevel else { throw Unsupported(detail: "no ByteLevel pre-tokenizer (not a byte-level BPE)") }
        var ids = prefix
        for piece in pieces where !piece.isEmpty {
            let mapped = String(String.UnicodeScalarView(String(String.UnicodeScalarView(piece)).utf8.map { ByteLevelBPE.byteToUnicode[Int($0)] }))
            ids += try bpe(mapped)
        }
        return ids + suffix
    }

    /// BPE of one byte-level-mapped piece.
    private func bpe(_ word: String) throws -> [Int] {
        if ignoreMerges, let id = vocabulary[word] { return [id] }
        var symbols = word.unicodeScalars.map { String($0) }
        while symbols.count > 1 {
            var best: (rank: Int, at: Int)?
            for i in 0..<(symbols.count - 1) {
                if let r = ranks[symbols[i] + "\u{0}" + symbols[i + 1]], best.map({ r < $0.rank }) ?? true { best = (r, i) }
            }
            guard let best else { break }
            let (a, b) = (symbols[best.at], symbols[best.at + 1])
            var merged: [String] = []
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == a && symbols[i + 1] == b { merged.append(a + b); i += 2 } else { merged.append(symbols[i]); i += 1 }
            }
            symbols = merged
        }
        return try symbols.map { s in
            guard let id = vocabulary[s] else { throw Unsupported(detail: "symbol '\(s)' is not in the vocabulary (no unk for byte-level BPE)") }
            return id
        }
    }

    private static func splitOn(_ s: [Unicode.Scalar], _ piece: [Unicode.Scalar], removed: Bool) -> [[Unicode.Scalar]] {
        guard !s.isEmpty else { return [piece] }
        var out: [[Unicode.Scalar]] = []
        var start = 0, i = 0
        while i + s.count <= piece.count {
            if Array(piece[i..<(i + s.count)]) == s {
                if i > start { out.append(Array(piece[start..<i])) }
                if !removed { out.append(s) }
                i += s.count
                start = i
            } else { i += 1 }
        }
        if start < piece.count { out.append(Array(piece[start...])) }
        return out
    }

    private static func splitDigits(_ piece: [Unicode.Scalar], individually: Bool) -> [[Unicode.Scalar]] {
        var out: [[Unicode.Scalar]] = []
        var current: [Unicode.Scalar] = []
        var currentIsDigit = false
        for s in piece {
            let d = s.isASCII && ("0"..."9").contains(s)
            if !current.isEmpty && (d != currentIsDigit || (d && individually)) { out.append(current); current = [] }
            current.append(s)
            currentIsDigit = d
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    /// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes as themselves, the others from U+0100 on.
    static let byteToUnicode: [Unicode.Scalar] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var n = 0
        for b in 0..<256 {
            if printable.contains(b) { table[b] = Unicode.Scalar(UInt32(b))! } else { table[b] = Unicode.Scalar(UInt32(256 + n))!; n += 1 }
        }
        printable.removeAll()
        return table
    }()
}

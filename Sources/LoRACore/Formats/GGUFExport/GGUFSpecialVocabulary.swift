import Foundation
import GGUF
import SafeTensors

/// The special tokens of a transformers model directory as gguf-py's `SpecialVocab` (gguf-py in
/// llama.cpp's tree, used by `convert_hf_to_gguf.py` with `load_merges=False`) finds them: ids of
/// bos/eos/unk/sep/pad/cls/mask, whether bos/eos/sep are added, the chat template and the
/// normalizer flags, as GGUF keys in the order the converter adds them.
///
/// Sources, in the reference's order: tokenizer.json (normalizer, `added_tokens`, the
/// `post_processor`'s ByteLevel / RobertaProcessing / TemplateProcessing), tokenizer_config.json
/// (`*_token` strings or `{content}` looked up among tokenizer.json's added tokens, `add_*_token`,
/// `chat_template`, else chat_template.jinja / chat_template.json), then config.json's
/// `*_token_id` for types still unset. Ids at or past `vocabularySize` are skipped, as the
/// reference skips them; types without a GGUF key (cls) are dropped as it drops them.
///
/// With `loadMerges` (the byte-level BPE path), tokenizer.json's merges come first.
///
/// Refused by name (rather than written differently): several named chat templates
/// (`additional_chat_templates/`, a list), merges only in merges.txt.
struct GGUFSpecialVocabulary {
    /// `tokenizer.json`'s merges as `"a b"` (spaces inside a part as U+0120), when loaded.
    private(set) var merges: [String] = []
    private(set) var tokenIDs: [(type: String, id: Int)] = []
    private(set) var addTokens: [(type: String, add: Bool)] = []
    private(set) var chatTemplate: String?
    private(set) var normalizerLowercase: Bool?
    private(set) var normalizerStripAccents: Bool?
    private var types = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
    /// Ids must be below it (nil: any id, as the byte-level BPE path creates it without one).
    private let vocabularySize: Int?

    /// The GGUF key of each special token type that has one (gguf-py's `add_{type}_token_id`).
    static let idKeys = ["bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                         "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
                         "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
                         "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id"]
    /// gguf-py's `add_add_{type}_token` handlers.
    static let addKeys = ["bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token",
                          "sep": "tokenizer.ggml.add_sep_token"]

    /// - Throws: `LoRACoreError.invalidConfig` naming the file for JSON that is not valid, a negative
    ///   token id, or a chat template lora-tool does not write.
    /// - Parameter types: the special token types to look for (gguf-py's default list when nil).
    init(directory: String, vocabularySize: Int?, loadMerges: Bool = false, types: [String]? = nil) throws {
        self.vocabularySize = vocabularySize
        if let types { self.types = types }
        try loadTokenizerFiles(directory, loadMerges: loadMerges)
        if let config = try SideFiles.readJSON(directory + "/config.json") {
            for t in self.types {
                let id = config["\(t)_token_id"] ?? config["text_config"]?["\(t)_token_id"]
                try setToken(t, id?.intValue, file: directory + "/config.json")
            }
        }
    }

    /// The metadata, in the order `SpecialVocab.add_to_gguf` writes it.
    var metadata: [(key: String, value: GGUFValue)] {
        var out: [(key: String, value: GGUFValue)] = []
        if !merges.isEmpty { out.append(("tokenizer.ggml.merges", .array(.string, merges.map { .string($0) }))) }
        for (t, id) in tokenIDs {
            if let key = GGUFSpecialVocabulary.idKeys[t] { out.append((key, .uint32(UInt32(id)))) }
        }
        for (t, add) in addTokens {
            if let key = GGUFSpecialVocabulary.addKeys[t] { out.append((key, .bool(add))) }
        }
        if let chatTemplate { out.append(("tokenizer.chat_template", .string(chatTemplate))) }
        if let normalizerLowercase { out.append(("tokenizer.ggml.normalizer.lowercase", .bool(normalizerLowercase))) }
        if let normalizerStripAccents { out.append(("tokenizer.ggml.normalizer.strip_accents", .bool(normalizerStripAccents))) }
        return out
    }

    // MARK: - The reference's steps

    private mutating func setToken(_ type: String, _ id: Int?, file: String) throws {
        guard let id else { return }
        guard id >= 0 else { throw LoRACoreError.invalidConfig(file: file, detail: "invalid value for special token type \(type): \(id)") }
        guard id < (vocabularySize ?? Int.max), !tokenIDs.contains(where: { $0.type == type }) else { return }
        tokenIDs.append((type, id))
    }

    private mutating func setDefaultAdd(_ type: String, _ add: Bool) {
        if !addTokens.contains(where: { $0.type == type }) { addTokens.append((type, add)) }
    }

    private mutating func setAdd(_ type: String, _ add: Bool) {
        if let i = addTokens.firstIndex(where: { $0.type == type }) { addTokens[i].add = add } else { addTokens.append((type, add)) }
    }

    private mutating func parseNormalizer(_ n: JSONValue) {
        switch n["type"]?.stringValue {
        case "Lowercase": normalizerLowercase = true
        case "StripAccents": normalizerStripAccents = true
        case "BertNormalizer":
            if let v = n["lowercase"] { normalizerLowercase = v.boolValue }
            if let v = n["strip_accents"] { normalizerStripAccents = v.boolValue }
        case "Sequence":
            for m in n["normalizers"]?.arrayValue ?? [] { parseNormalizer(m) }
        default: break
        }
    }

    /// `_try_load_from_tokenizer_json`: tokenizer.json and tokenizer_config.json.
    private mutating func loadTokenizerFiles(_ directory: String, loadMerges: Bool) throws {
        let tokenizer = try SideFiles.readJSON(directory + "/tokenizer.json")
        if loadMerges {
            for m in tokenizer?["model"]?["merges"]?.arrayValue ?? [] {
                if let s = m.stringValue {
                    merges.append(s)
                } else if let pair = m.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue {
                    // transformers ≥ 4.45's pairs: spaces inside a part written as U+0120, as gguf-py does.
                    merges.append([a, b].map { $0.replacingOccurrences(of: " ", with: "\u{0120}") }.joined(separator: " "))
                } else {
                    throw LoRACoreError.invalidConfig(file: directory + "/tokenizer.json", detail: "model.merges: an entry that is neither \"a b\" nor [a, b]")
                }
            }
            if merges.isEmpty {
                throw LoRACoreError.invalidConfig(file: directory + "/tokenizer.json", detail: "no model.merges (merges.txt is not read): a BPE tokenizer needs them")
            }
        }
        let configFile = directory + "/tokenizer_config.json"
        var config = try SideFiles.readJSON(configFile)?.objectMembers
        if let normalizer = tokenizer?["normalizer"], normalizer != .null { parseNormalizer(normalizer) }
        let added = tokenizer?["added_tokens"]?.arrayValue ?? []
        // A `*_token` of tokenizer_config.json as the reference compares it: a string, or an AddedToken
        // object (never equal to a string; present, so not "missing").
        func configString(_ key: String) -> String? {
            guard let v = config?.first(where: { $0.key == key })?.value else { return nil }
            if let s = v.stringValue { return s }
            return v.objectMembers != nil ? "\u{0}object" : nil
        }
        func setConfig(_ key: String, _ value: String?) {
            guard config != nil, let value else { return }
            if let i = config!.firstIndex(where: { $0.key == key }) { config![i].value = .string(value) } else { config!.append((key, .string(value))) }
        }
        if let tokenizer {
            var bos = configString("bos_token"), cls = configString("cls_token")
            var eos = configString("eos_token"), sep = configString("sep_token")
            let hasConfig = !(config?.isEmpty ?? true)
            if (bos ?? "").isEmpty, let c = cls, !c.isEmpty, hasConfig { bos = c; setConfig("bos_token", c) }
            if (eos ?? "").isEmpty, let s = sep, !s.isEmpty, hasConfig { eos = s; setConfig("eos_token", s) }
            if let post = tokenizer["post_processor"], post != .null {
                for processor in post["processors"]?.arrayValue ?? [post] {
                    switch processor["type"]?.stringValue {
                    case "ByteLevel":
                        setDefaultAdd("bos", false)
                        setDefaultAdd("eos", false)
                    case "RobertaProcessing":
                        setAdd("bos", true)
                        setAdd("eos", true)
                        setAdd("sep", true)
                        if (cls ?? "").isEmpty, hasConfig {
                            cls = processor["cls"]?.arrayValue?.first?.stringValue ?? bos
                            setConfig("cls_token", cls)
                        }
                        if (sep ?? "").isEmpty, hasConfig {
                            sep = processor["sep"]?.arrayValue?.first?.stringValue ?? eos
                            setConfig("sep_token", sep)
                        }
                    case "TemplateProcessing":
                        let single = processor["single"]?.arrayValue ?? []
                        let pair = processor["pair"]?.arrayValue ?? []
                        func special(_ v: JSONValue?) -> String? {
                            guard let s = v?["SpecialToken"]?["id"]?.stringValue, !s.isEmpty else { return nil }
                            return s
                        }
                        var first: String?, last: String?
                        if single.count > 1 {
                            if let f = special(single.first) {
                                first = f
                                if !hasConfig {
                                    bos = f
                                } else if f != bos && f != cls {
                                    if (bos ?? "").isEmpty { bos = f; setConfig("bos_token", f) }
                                    if (cls ?? "").isEmpty { cls = f; setConfig("cls_token", f) }
                                }
                                setAdd("bos", f == bos || f == cls)
                            }
                            if let l = special(single.last) {
                                last = l
                                if !hasConfig {
                                    eos = l
                                } else if l != eos {
                                    if !types.contains("eot") {
                                        types.append("eot")
                                        setConfig("eot_token", eos)
                                    } else if !types.contains("eom") {
                                        types.append("eom")
                                        setConfig("eom_token", eos)
                                    }
                                    eos = l
                                    setConfig("eos_token", l)
                                }
                                setAdd("eos", l == eos)
                            }
                        }
                        if !pair.isEmpty {
                            let start = first != nil && special(pair.first) == first ? 1 : 0
                            let stop = last != nil && special(pair.last) == last ? pair.count - 1 : pair.count
                            let middle = start < stop ? Array(pair[start..<stop]) : []
                            if !middle.isEmpty {
                                let a = middle.first?["Sequence"]?["id"]?.stringValue
                                let b = middle.last?["Sequence"]?["id"]?.stringValue
                                if a == "A" && b == "B" && middle.count > 2 {
                                    let inner = Array(middle[1..<(middle.count - 1)])
                                    var addSep = false
                                    if let e = special(inner.first), (e == sep || e == eos) && last == nil { addSep = true }
                                    if inner.count == 2, let e = special(inner[1]), e == sep || e == eos { addSep = true }
                                    setAdd("sep", addSep)
                                    if addSep && (sep ?? "").isEmpty && hasConfig { setConfig("sep_token", eos) }
                                }
                            }
                        }
                    default: break
                    }
                }
            }
        }
        guard let config, !config.isEmpty else { return }
        try loadChatTemplate(directory, config: .object(config), configFile: configFile)
        for t in types {
            if let add = config.first(where: { $0.key == "add_\(t)_token" })?.value.boolValue {
                setDefaultAdd(t, add)  // the post_processor's value wins over tokenizer_config's
            }
            let entry = config.first { $0.key == "\(t)_token" }?.value
            guard let content = entry?.stringValue ?? entry?["content"]?.stringValue else { continue }
            let id = added.first { $0["content"]?.stringValue == content }?["id"]?.intValue
            try setToken(t, id, file: configFile)
        }
    }

    private mutating func loadChatTemplate(_ directory: String, config: JSONValue, configFile: String) throws {
        var alternative: String?
        let jinja = directory + "/chat_template.jinja"
        if let bytes = try? RegularFile.readAll(jinja, limit: SideFiles.jsonLimit) {
            if let extra = try? FileManager.default.contentsOfDirectory(atPath: directory + "/additional_chat_templates"),
               extra.contains(where: { $0.hasSuffix(".jinja") }) {
                throw LoRACoreError.invalidConfig(file: directory + "/additional_chat_templates", detail: "several named chat templates are not written to GGUF yet")
            }
            alternative = String(decoding: bytes, as: UTF8.self)
        } else if let json = try SideFiles.readJSON(directory + "/chat_template.json") {
            alternative = json["chat_template"]?.stringValue
        }
        switch config["chat_template"] {
        case nil: chatTemplate = alternative
        case .null?: chatTemplate = nil
        case let .string(s)?: chatTemplate = s
        case .array?: throw LoRACoreError.invalidConfig(file: configFile, detail: "chat_template: a list of named templates is not written to GGUF yet")
        default: chatTemplate = nil  // the reference ignores (with a warning) other types
        }
    }
}

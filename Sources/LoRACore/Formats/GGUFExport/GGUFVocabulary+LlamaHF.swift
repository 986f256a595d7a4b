import Foundation
import SafeTensors

extension GGUFVocabulary {
    /// gguf-py's `LlamaHfVocab` (a Llama 2 style tokenizer.json: BPE with byte fallback): the base
    /// vocabulary (`model.vocab`) in id order, then the added tokens past it in id order. Every
    /// score is −1000; `<0xHH>` tokens are bytes; the tokenizer's special tokens (transformers'
    /// `all_special_tokens`: the named ones of tokenizer_config.json or special_tokens_map.json,
    /// and `additional_special_tokens` / `extra_special_tokens`) are control; added tokens that are
    /// not special are user-defined; the rest normal.
    static func llamaHF(directory: String, tokenizer: JSONValue, file: String) throws -> GGUFVocabulary {
        guard let vocab = tokenizer["model"]?["vocab"]?.objectMembers else {
            throw LoRACoreError.invalidConfig(file: file, detail: "model.vocab is not an object of token → id")
        }
        var byID: [Int: String] = [:]
        var idOf: [String: Int] = [:]
        for (token, value) in vocab {
            guard let id = value.intValue, id >= 0 else {
                throw LoRACoreError.invalidConfig(file: file, detail: "model.vocab '\(token)': the id is not a non-negative integer")
            }
            byID[id] = token
            idOf[token] = id
        }
        let baseSize = vocab.count
        var added: [(id: Int, token: String)] = []
        for entry in tokenizer["added_tokens"]?.arrayValue ?? [] {
            guard let id = entry["id"]?.intValue, let token = entry["content"]?.stringValue else {
                throw LoRACoreError.invalidConfig(file: file, detail: "added_tokens: an entry without an integer id and a content string")
            }
            idOf[token] = id
            if id >= baseSize { added.append((id, token)) }
        }
        added.sort { $0.id < $1.id }
        let specials = try specialTokens(directory: directory)
        let specialIDs = Set(specials.compactMap { idOf[$0] })

        var v = GGUFVocabulary()
        for id in 0..<baseSize {
            guard let token = byID[id] else {
                throw LoRACoreError.invalidConfig(file: file, detail: "model.vocab has no token with id \(id) (ids must be 0..<\(baseSize))")
            }
            v.tokens.append(token)
            v.scores.append(-1000)
            v.types.append(isByteToken(token) ? GGUFVocabulary.byte : specialIDs.contains(id) ? GGUFVocabulary.control : GGUFVocabulary.normal)
        }
        for (id, token) in added {
            v.tokens.append(token)
            v.scores.append(-1000)
            // The reference types a special added token from an empty text: never a byte token.
            v.types.append(specials.contains(token) ? (specialIDs.contains(id) ? GGUFVocabulary.control : GGUFVocabulary.normal) : GGUFVocabulary.userDefined)
        }
        return v
    }

    /// `<0xHH>`.
    static func isByteToken(_ token: String) -> Bool {
        let u = Array(token.utf8)
        guard u.count == 6, u[0] == UInt8(ascii: "<"), u[1] == UInt8(ascii: "0"), u[2] == UInt8(ascii: "x"), u[5] == UInt8(ascii: ">") else { return false }
        return u[3...4].allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// transformers' `all_special_tokens`: the named special tokens, then the extra ones, each once.
    static func specialTokens(directory: String) throws -> [String] {
        let config = try SideFiles.readJSON(directory + "/tokenizer_config.json")
        let map = try SideFiles.readJSON(directory + "/special_tokens_map.json")
        func text(_ v: JSONValue?) -> String? { v?.stringValue ?? v?["content"]?.stringValue }
        var out: [String] = []
        for name in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let t = text(config?[name]) ?? text(map?[name]), !out.contains(t) { out.append(t) }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            for v in (config?[key] ?? map?[key])?.arrayValue ?? [] {
                if let t = text(v), !out.contains(t) { out.append(t) }
            }
        }
        return out
    }
}

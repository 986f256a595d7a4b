import Foundation
import SafeTensors

extension GGUFVocabulary {
    /// The converter's `_set_vocab_gpt2` (`get_vocab_base`) for a byte-level BPE tokenizer.json:
    /// `vocab_size` slots (config.json's, else the vocabulary's), each the token with that id (base
    /// vocabulary or added token) or `[PAD{i}]` (unused); added tokens control when `special` or
    /// when they look special, else user-defined (`▁` written as a space); the rest normal; no
    /// scores. `tokenizer.ggml.pre` is the name llama.cpp gives the hash of the token ids of the
    /// converter's test text (`GGUFPreTokenizerTable`), encoded here as `tokenizers` encodes it
    /// (`ByteLevelBPE`). The merges come with the special tokens (`GGUFSpecialVocabulary`).
    ///
    /// - Parameter extraPreTokenizers: hashes → names beyond the converter's table (tests).
    /// - Throws: `LoRACoreError.invalidConfig` naming the file when the tokenizer cannot be encoded
    ///   as `tokenizers` would, or its hash is not one llama.cpp knows (the converter refuses it too).
    static func gpt2(directory: String, tokenizer: JSONValue, file: String, vocabularySize: Int?,
                     extraPreTokenizers: [String: String]) throws -> GGUFVocabulary {
        guard let vocab = tokenizer["model"]?["vocab"]?.objectMembers else {
            throw LoRACoreError.invalidConfig(file: file, detail: "model.vocab is not an object of token → id")
        }
        var byID: [Int: String] = [:]
        for (token, value) in vocab {
            guard let id = value.intValue, id >= 0 else {
                throw LoRACoreError.invalidConfig(file: file, detail: "model.vocab '\(token)': the id is not a non-negative integer")
            }
            byID[id] = token
        }
        var added: [Int: (content: String, special: Bool)] = [:]
        for entry in tokenizer["added_tokens"]?.arrayValue ?? [] {
            guard let id = entry["id"]?.intValue, id >= 0, let content = entry["content"]?.stringValue else {
                throw LoRACoreError.invalidConfig(file: file, detail: "added_tokens: an entry without an id and a content string")
            }
            byID[id] = content
            added[id] = (content, entry["special"]?.boolValue ?? false)
        }
        let addedContents = Set(added.values.map(\.content))
        let n = vocabularySize ?? byID.count
        if let top = byID.keys.max(), top >= n {
            throw LoRACoreError.invalidConfig(file: file, detail: "token id \(top) is not below vocab_size \(n)")
        }

        var v = GGUFVocabulary()
        v.model = "gpt2"
        v.pre = try preTokenizer(tokenizer, file: file, extra: extraPreTokenizers)
        v.writesScores = false
        for i in 0..<n {
            guard var token = byID[i] else {
                v.tokens.append("[PAD\(i)]")
                v.types.append(GGUFVocabulary.unused)
                continue
            }
            if addedContents.contains(token) {
                // The reference looks the token's flags up by id.
                if added[i]?.special == true || GGUFVocabulary.looksSpecial(token) {
                    v.types.append(GGUFVocabulary.control)
                } else {
                    token = token.replacingOccurrences(of: "\u{2581}", with: " ")
                    v.types.append(GGUFVocabulary.userDefined)
                }
            } else {
                v.types.append(GGUFVocabulary.normal)
            }
            v.tokens.append(token)
        }
        return v
    }

    /// llama.cpp's name for the tokenizer's pre-tokenizer: the hash of the ids of the converter's
    /// test text, looked up as `get_vocab_base_pre` looks it up.
    static func preTokenizer(_ tokenizer: JSONValue, file: String, extra: [String: String]) throws -> String {
        let ids: [Int]
        do {
            ids = try ByteLevelBPE(tokenizer: tokenizer).encode(GGUFPreTokenizerTable.checkText)
        } catch let e as ByteLevelBPE.Unsupported {
            throw LoRACoreError.invalidConfig(file: file, detail: "cannot encode like Hugging Face tokenizers (\(e.detail)), so llama.cpp's name for its pre-tokenizer cannot be found")
        }
        let hash = SHA256.hash(Array(("[" + ids.map(String.init).joined(separator: ", ") + "]").utf8))
        guard let name = extra[hash] ?? GGUFPreTokenizerTable.names[hash] else {
            throw LoRACoreError.invalidConfig(file: file, detail: "a BPE pre-tokenizer llama.cpp does not know (hash \(hash), as convert_hf_to_gguf.py computes it); the converter refuses it too")
        }
        return name
    }
}

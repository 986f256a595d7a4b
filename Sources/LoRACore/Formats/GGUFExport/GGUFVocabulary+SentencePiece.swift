import Foundation
import SafeTensors

extension GGUFVocabulary {
    /// `_create_vocab_sentencepiece`: `vocab_size` slots (config.json's, else the model's piece
    /// count) start as `[PAD{i}]`, score −10000, unused; each piece fills its slot (text, score,
    /// type: unknown, control, unused and byte as such, everything else, user-defined pieces
    /// included, normal); added_tokens.json entries become user-defined (score −1000); then
    /// tokenizer_config.json's `added_tokens_decoder` entries: control when `special` or when they
    /// look special, else user-defined with `▁` written as a space (score −1000). Ids past the
    /// vocabulary are skipped, as the converter skips them.
    /// - Parameter addedTokensDecoder: apply tokenizer_config.json's `added_tokens_decoder` (Phi-3
    ///   reads it its own way).
    static func sentencePiece(directory: String, vocabularySize: Int?, addedTokensDecoder: Bool = true) throws -> GGUFVocabulary {
        let sp = try SentencePieceModel(path: directory + "/tokenizer.model")
        let n = vocabularySize ?? sp.pieces.count
        var v = GGUFVocabulary()
        v.tokens = (0..<n).map { "[PAD\($0)]" }
        v.scores = [Float](repeating: -10000, count: n)
        v.types = [Int32](repeating: GGUFVocabulary.unused, count: n)
        for (id, piece) in sp.pieces.enumerated() where id < n {
            v.tokens[id] = piece.text
            v.scores[id] = piece.score
            switch piece.type {
            case .unknown: v.types[id] = GGUFVocabulary.unknown
            case .control: v.types[id] = GGUFVocabulary.control
            case .unused: v.types[id] = GGUFVocabulary.unused
            case .byte: v.types[id] = GGUFVocabulary.byte
            case .normal, .userDefined: v.types[id] = GGUFVocabulary.normal
            }
        }
        let addedFile = directory + "/added_tokens.json"
        if let added = try SideFiles.readJSON(addedFile) {
            guard let members = added.objectMembers else {
                throw LoRACoreError.invalidConfig(file: addedFile, detail: "not an object of token → id")
            }
            for (token, idValue) in members {
                guard let id = idValue.intValue else {
                    throw LoRACoreError.invalidConfig(file: addedFile, detail: "token '\(token)': the id is \(idValue.typeName), not an integer")
                }
                guard id >= 0 && id < n else { continue }
                (v.tokens[id], v.scores[id], v.types[id]) = (token, -1000, GGUFVocabulary.userDefined)
            }
        }
        let configFile = directory + "/tokenizer_config.json"
        if addedTokensDecoder, let decoder = try SideFiles.readJSON(configFile)?["added_tokens_decoder"]?.objectMembers {
            for (key, entry) in decoder {
                guard let id = Int(key), var token = entry["content"]?.stringValue else {
                    throw LoRACoreError.invalidConfig(file: configFile, detail: "added_tokens_decoder '\(key)': needs an integer id and a content string")
                }
                guard id >= 0 && id < n else { continue }
                if entry["special"]?.boolValue == true || GGUFVocabulary.looksSpecial(token) {
                    v.types[id] = GGUFVocabulary.control
                } else {
                    token = token.replacingOccurrences(of: "\u{2581}", with: " ")
                    v.types[id] = GGUFVocabulary.userDefined
                }
                (v.tokens[id], v.scores[id]) = (token, -1000)
            }
        }
        return v
    }

    /// `Phi3MiniModel.set_vocab`'s own SentencePiece reading: the slots and pieces as
    /// `sentencePiece`, added_tokens.json as there; then every `added_tokens_decoder` entry of
    /// tokenizer_config.json and every `added_tokens` entry of tokenizer.json becomes user-defined,
    /// or control when `special` (no "looks special" rule, no `▁` rewriting), score −1000.
    static func phi3(directory: String, vocabularySize: Int?) throws -> GGUFVocabulary {
        guard FileManager.default.fileExists(atPath: directory + "/tokenizer.model") else {
            throw LoRACoreError.invalidConfig(file: directory + "/tokenizer.model", detail: "missing: Phi-3's converter reads its SentencePiece model")
        }
        var v = try sentencePiece(directory: directory, vocabularySize: vocabularySize, addedTokensDecoder: false)
        var entries: [(id: Int, content: String, special: Bool, file: String)] = []
        let configFile = directory + "/tokenizer_config.json"
        for (key, entry) in try SideFiles.readJSON(configFile)?["added_tokens_decoder"]?.objectMembers ?? [] {
            guard let id = Int(key), let content = entry["content"]?.stringValue else {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "added_tokens_decoder '\(key)': needs an integer id and a content string")
            }
            entries.append((id, content, entry["special"]?.boolValue ?? false, configFile))
        }
        let jsonFile = directory + "/tokenizer.json"
        for entry in try SideFiles.readJSON(jsonFile)?["added_tokens"]?.arrayValue ?? [] {
            guard let id = entry["id"]?.intValue, let content = entry["content"]?.stringValue else {
                throw LoRACoreError.invalidConfig(file: jsonFile, detail: "added_tokens: an entry without an integer id and a content string")
            }
            entries.append((id, content, entry["special"]?.boolValue ?? false, jsonFile))
        }
        for e in entries {
            guard e.id >= 0 && e.id < v.tokens.count else {
                throw LoRACoreError.invalidConfig(file: e.file, detail: "added token \(e.id) '\(e.content)' is past the vocabulary of \(v.tokens.count) (the converter fails on it)")
            }
            (v.tokens[e.id], v.scores[e.id], v.types[e.id]) = (e.content, -1000, e.special ? GGUFVocabulary.control : GGUFVocabulary.userDefined)
        }
        return v
    }
}

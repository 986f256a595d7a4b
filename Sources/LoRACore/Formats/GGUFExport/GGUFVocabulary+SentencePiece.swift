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
    static func sentencePiece(directory: String, vocabularySize: Int?) throws -> GGUFVocabulary {
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
        if let decoder = try SideFiles.readJSON(configFile)?["added_tokens_decoder"]?.objectMembers {
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
}

import Foundation
import GGUF
import SafeTensors

/// A tokenizer as llama.cpp's converter writes it into a GGUF model (`tokenizer.ggml.*`): the
/// token texts, scores and types, the tokenizer model and pre-tokenizer names, then the special
/// tokens (`GGUFSpecialVocabulary`).
///
/// Read the way `convert_hf_to_gguf.py` reads the Llama family's tokenizers, in its order:
/// - `tokenizer.model` (SentencePiece): `_create_vocab_sentencepiece` (`+SentencePiece`);
/// - else (llama only) a byte-fallback BPE `tokenizer.json` (Llama 2 style): `LlamaHfVocab` (`+LlamaHF`);
/// - else a byte-level BPE `tokenizer.json` (GPT-2, Llama 3, Qwen2 style): `_set_vocab_gpt2`
///   (`+GPT2`), its pre-tokenizer named by the hash of its encoding of the converter's test text.
///
/// Token types are gguf's `TokenType`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
struct GGUFVocabulary {
    var model = "llama"
    var pre = "default"
    var tokens: [String] = []
    var scores: [Float] = []
    /// False for byte-level BPE: the converter writes no scores for it.
    var writesScores = true
    var types: [Int32] = []

    static let normal: Int32 = 1, unknown: Int32 = 2, control: Int32 = 3, userDefined: Int32 = 4, unused: Int32 = 5, byte: Int32 = 6

    /// The metadata the converter writes for it (without the special tokens), in its order.
    var metadata: [(key: String, value: GGUFValue)] {
        var out: [(key: String, value: GGUFValue)] = [
            ("tokenizer.ggml.model", .string(model)), ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) }))]
        if writesScores { out.append(("tokenizer.ggml.scores", .array(.float32, scores.map { .float32($0) }))) }
        out.append(("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0) })))
        return out
    }

    /// The tokenizer of the model in `directory`.
    /// - Parameters:
    ///   - vocabularySize: config.json's `vocab_size` (nil when absent).
    ///   - llamaHF: whether to try `LlamaHfVocab` after SentencePiece (the llama converter does;
    ///     qwen2/qwen3 go straight to the byte-level BPE path).
    /// - Throws: `LoRACoreError.invalidConfig` naming the file for a tokenizer lora-tool cannot
    ///   write as the converter does, or none at all.
    /// - Parameter extraPreTokenizers: pre-tokenizer hashes → names beyond llama.cpp's (tests).
    static func read(directory: String, vocabularySize: Int?, llamaHF tryLlamaHF: Bool,
                     extraPreTokenizers: [String: String] = [:]) throws -> GGUFVocabulary {
        if FileManager.default.fileExists(atPath: directory + "/tokenizer.model") {
            return try sentencePiece(directory: directory, vocabularySize: vocabularySize)
        }
        let json = directory + "/tokenizer.json"
        guard let tokenizer = try SideFiles.readJSON(json) else {
            throw LoRACoreError.invalidConfig(file: directory, detail: "no tokenizer.model or tokenizer.json: a GGUF model carries its tokenizer")
        }
        let model = tokenizer["model"]
        let type = model?["type"]?.stringValue
        let byteFallback = model?["byte_fallback"]?.boolValue
        let isLlama3 = type == "BPE" && model?["ignore_merges"]?.boolValue == true && byteFallback != true
        if tryLlamaHF && !isLlama3 && type == "BPE" && byteFallback == true && tokenizer["decoder"]?["type"]?.stringValue == "Sequence" {
            return try llamaHF(directory: directory, tokenizer: tokenizer, file: json)
        }
        return try gpt2(directory: directory, tokenizer: tokenizer, file: json, vocabularySize: vocabularySize, extraPreTokenizers: extraPreTokenizers)
    }

    /// The converter's `does_token_look_special`.
    static func looksSpecial(_ token: String) -> Bool {
        ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(token)
            || (token.hasPrefix("<|") && token.hasSuffix("|>"))
            || (token.hasPrefix("<｜") && token.hasSuffix("｜>"))
            || (token.hasPrefix("<unused") && token.hasSuffix(">"))
    }
}

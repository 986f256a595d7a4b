import ArgumentParser
import GGUF

/// The usage check of `--split-max-size` (merge and convert --to gguf): what
/// `convert_hf_to_gguf.py`'s `split_str_to_n_bytes` reads (`GGUFSplit.parseSize`), above 0.
enum SplitSize {
    static func validate(_ text: String) throws {
        guard GGUFSplit.parseSize(text) != nil else {
            throw ValidationError("--split-max-size '\(Render.escaped(text))' is not a positive number of bytes, optionally followed by K, M or G (powers of 1000, as convert_hf_to_gguf.py reads it)")
        }
    }
}

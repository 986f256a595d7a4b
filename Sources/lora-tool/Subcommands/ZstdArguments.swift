import ArgumentParser

/// `--zstd [--zstd-level N]`, shared by the commands that write adapters.
struct ZstdArguments: ParsableArguments {
    @Flag(help: "Compress the weights file with zstd (*.safetensors.zst; lora-tool reads it, PEFT does not).")
    var zstd = false

    @Option(help: "zstd level with --zstd (1-19).")
    var zstdLevel: Int32 = 3

    func validate() throws {
        guard (1...19).contains(zstdLevel) else { throw ValidationError("--zstd-level must be 1 to 19") }
    }

    /// The compression level to write with, or nil for plain safetensors.
    var level: Int32? { zstd ? zstdLevel : nil }
}

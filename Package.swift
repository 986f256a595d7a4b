// swift-tools-version:6.0
import Foundation
import PackageDescription

let package = Package(
    name: "lora-tool",
    products: [
        .executable(name: "lora-tool", targets: ["lora-tool"]),
        .library(name: "LoRACore", targets: ["LoRACore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // MARK: - System libraries (pkg-config; installed by scripts/bootstrap)
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CMalloc"),
        .systemLibrary(name: "CJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),

        // MARK: - C in a corner: vector kernels (runtime dispatch over AVX2 / AVX-512; imported only by
        // LoRAKernels) and the file calls glibc hides behind _GNU_SOURCE (imported only by SafeTensors)
        .target(name: "CKernels"),
        .target(name: "CFiles"),

        // MARK: - Libraries: all logic lives here; none prints or parses arguments
        .target(name: "SafeTensors", dependencies: ["CZstd", "CFiles"]),
        .target(name: "GGUF", dependencies: ["SafeTensors", "LoRAKernels"]),
        .target(name: "LoRAKernels", dependencies: ["COpenBLAS", "CKernels"]),
        .target(name: "LoRAGraph", dependencies: ["SafeTensors"]),
        .target(name: "LoRACore", dependencies: ["SafeTensors", "GGUF", "LoRAKernels", "LoRAGraph", .product(name: "Yams", package: "Yams")]),

        // MARK: - Executable: parses arguments, renders reports
        .executableTarget(
            name: "lora-tool",
            dependencies: ["LoRACore", "LoRAGraph", "LoRAKernels", "SafeTensors", "GGUF", "CMalloc", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // MARK: - Benchmark (scripts/bench)
        .executableTarget(name: "lora-bench", dependencies: ["SafeTensors", "GGUF", "LoRAKernels", "LoRACore"], exclude: ["ImageShapes"]),

        // MARK: - Fuzzing (bodies; the libFuzzer executables are added below when LORA_TOOL_FUZZ is set)
        .target(name: "FuzzTargets", dependencies: ["SafeTensors", "GGUF", "LoRAGraph", "LoRACore"]),

        // MARK: - Tests
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "CJSONC"], exclude: ["Fixtures"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "SafeTensors", "LoRAKernels"], exclude: ["Fixtures"]),
        .testTarget(name: "LoRAKernelsTests", dependencies: ["LoRAKernels"]),
        .testTarget(name: "LoRAGraphTests", dependencies: ["LoRAGraph"], exclude: ["Fixtures"]),
        .testTarget(name: "LoRACoreTests", dependencies: ["LoRACore", "LoRAKernels", "LoRAGraph", "GGUF"],
                    exclude: ["Fixtures", "ExtractFixtures", "QuantFixtures", "CombineFixtures", "AdapterTypeFixtures", "GGUFMergeFixtures", "ImageFixtures"]),
        .testTarget(name: "LoraToolTests", dependencies: ["lora-tool", "FuzzTargets", .product(name: "Yams", package: "Yams")]),
    ]
)

// libFuzzer executables have no `main` of their own (libFuzzer provides it), so they only build with
// `-sanitize=fuzzer`: scripts/fuzz sets LORA_TOOL_FUZZ=1 and builds them in their own scratch folder.
if ProcessInfo.processInfo.environment["LORA_TOOL_FUZZ"] != nil {
    package.targets.append(.systemLibrary(name: "CFuzzer", path: "Fuzz/CFuzzer"))
    for name in ["fuzz-safetensors", "fuzz-json", "fuzz-names", "fuzz-gguf", "fuzz-image"] {
        package.targets.append(.executableTarget(
            name: name, dependencies: ["FuzzTargets", "CFuzzer"], path: "Fuzz/entry/\(name)",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
    }
}

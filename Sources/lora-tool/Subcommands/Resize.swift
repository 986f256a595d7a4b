import ArgumentParser
import Foundation
import LoRACore

extension LoraTool {
    /// `lora-tool resize`: lower an adapter's rank by SVD of s·B·A.
    struct Resize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lower an adapter's rank per module by SVD of s·B·A (from the factors, cheaply).",
            discussion: """
                QR of B and Aᵀ, then the SVD of the r×r core; keeps --rank components or the fewest \
                holding --energy of ‖s·B·A‖²_F. Writes a PEFT adapter with scale 1 and reports, per \
                module, the energy kept and the relative Frobenius error (sd-scripts' sv_fro). An \
                image-model LoRA (kohya or diffusers format) keeps its format, names and each module's \
                scale (alpha = scale times the new rank), as sd-scripts' resize_lora.py does.
                """)

        @Argument(help: "Adapter directory (PEFT, AdaLoRA or mlx), or an image-model LoRA file or folder (kohya, diffusers).")
        var adapter: String

        @Option(help: "Keep this rank per module.")
        var rank: Int?

        @Option(help: "Keep the smallest rank holding this fraction of the energy (0 < P ≤ 1).")
        var energy: Double?

        @Option(help: "With --energy: the largest rank to keep.")
        var maxRank: Int?

        @Option(help: "Output adapter directory (an image-model LoRA: a folder, or one file when it ends in .safetensors).")
        var output: String

        @OptionGroup var compression: ZstdArguments

        @Flag(help: "Replace an existing output that lora-tool wrote (a directory carrying the .lora-tool marker, or a safetensors file); anything else is never replaced.")
        var force = false

        @Flag(help: "Print the report as JSON.")
        var json = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            try RankRule.validate(rank: rank, energy: energy, maxRank: maxRank)
        }

        func run() throws {
            var o = ResizeOptions(adapter: try ModelSpecs.resolve(adapter), output: output, rule: RankRule.rule(rank: rank, energy: energy, maxRank: maxRank))
            o.force = force
            o.zstdLevel = compression.level
            let modules = try LoRACore.Resize.run(o)
            if json {
                Render.printJSON(.array(modules.map {
                    .object([("module", .string($0.module)), ("from_rank", Render.json($0.fromRank)), ("rank", Render.json($0.rank)),
                             ("energy_kept", Render.json($0.energyKept)), ("relative_error", Render.json($0.relativeError))])
                }))
                return
            }
            var rows = [["  module", "rank", "energy kept", "rel. error"]]
            for m in modules {
                rows.append(["  " + m.module, "\(m.fromRank) → \(m.rank)", String(format: "%.6f", m.energyKept), String(format: "%.3g", m.relativeError)])
            }
            print("\(Render.escaped(output)): resized\n" + Render.table(rows))
        }
    }
}

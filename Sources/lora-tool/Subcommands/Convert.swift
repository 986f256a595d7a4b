import ArgumentParser
import Foundation
import LoRACore

extension LoraTool {
    /// `lora-tool convert`: an adapter in another dialect, same merged weights.
    struct Convert: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rewrite an adapter as PEFT, kohya or mlx-lm, with the scale translated exactly.",
            discussion: """
                Reads any dialect inspect understands (PEFT LoRA/rsLoRA/DoRA/AdaLoRA, kohya, mlx-lm) and \
                writes the same ΔW = s·B·A per module: PEFT with α = s·r (alpha_pattern where modules \
                differ), kohya with a per-module alpha = s·r (OUTPUT ending in .safetensors writes one \
                file), mlx-lm with one scale. What the target cannot express (DoRA in kohya, embedding or \
                Conv1D LoRA outside PEFT, mixed ranks in mlx) is refused with the reason. kohya input \
                needs --base to recover module paths.
                """)

        @Argument(help: "Adapter directory or file.")
        var adapter: String

        @Option(help: "Target dialect: peft, kohya or mlx.")
        var to: String

        @Option(help: "Output directory (or a .safetensors file for kohya).")
        var output: String

        @Option(help: "Base model: resolves kohya names and gives exact PEFT target_modules.")
        var base: String?

        @OptionGroup var compression: ZstdArguments

        @OptionGroup var scale: ScaleArguments

        @Flag(help: "Replace an existing output that lora-tool wrote (a directory carrying the .lora-tool marker, or a safetensors file); anything else is never replaced.")
        var force = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            guard ["peft", "kohya", "mlx"].contains(to) else { throw ValidationError("--to must be peft, kohya or mlx") }
        }

        func run() throws {
            var o = ConvertOptions(adapter: try ModelSpecs.resolve(adapter), to: Adapter.Format(rawValue: to)!, output: output)
            o.base = try base.map { try ModelSpecs.resolve($0) }
            o.force = force
            o.zstdLevel = compression.level
            o.scaleOverride = scale.override
            let r = try LoRACore.Convert.run(o)
            var rows = [["from", r.from], ["to", r.to], ["modules", "\(r.modules), scales \(r.scales.map(Render.number).joined(separator: ", "))"]]
            for n in r.notes { rows.append(["note", n]) }
            print("\(Render.escaped(output)): converted\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] }))
        }
    }
}

import ArgumentParser
import Foundation
import PixelDistributed
import PixelModel
import PixelTensor
import PixelText
import PixelTrain

/// `pixellm eval`: the reference's evaluations (MUSE by generation and matching; refCOCO family and ReasonSeg
/// teacher-forced) on a consolidated model or straight from a training checkpoint; under mpirun the images are
/// shared out over the ranks.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a model: gIoU / cIoU (MUSE: faithful and clean readings), text accuracy, per question kind; JSON report.",
        discussion: "--val-dataset takes the reference's names, '||'-separated: MultiReasonSeg|val, MultiReasonSeg|test_less, MultiReasonSeg|test_many, refcoco|unc|val, refcoco|unc|testA, refcoco+|unc|val, refcocog|umd|test, multirefcoco|unc|val, ReasonSeg|val, ... --model is a consolidated directory, or a run directory / training checkpoint (evaluated without consolidating).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(name: both("dataset-dir"), help: "The dataset tree (the reference's --dataset_dir layout).") var datasetDir: String
    @Option(name: both("val-dataset"), help: "Splits to evaluate, '||'-separated (see above).") var valDataset: String
    @Option(help: "Write the JSON report (figures and every question's answer, pairs and IoUs) here.") var out: String?
    @Option(help: "New tokens at most per generated answer (the reference: 512).") var maxNewTokens = 512
    @Option(help: "Points sampled per question for the matching cost (the reference: 12544).") var points = 12_544
    @Option(help: "Seed of the matching points and of the question templates.") var seed: UInt64 = 0
    @Option(help: "Write overlays (predicted masks, ground truth, the answer) of the first --save-masks-count images here.") var saveMasks: String?
    @Option(help: "Images whose overlays --save-masks writes.") var saveMasksCount = 8
    @Option(help: "Evaluate only the first N images of each split.") var limit: Int?
    @Flag(help: "No progress bar.") var quiet = false

    func validate() throws {
        do { _ = try EvalDataset.parse(valDataset) } catch { throw ValidationError("\(error)") }
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be >= 1") }
        if points < 1 { throw ValidationError("--points must be >= 1") }
        if let l = limit, l < 1 { throw ValidationError("--limit must be >= 1") }
        if saveMasksCount < 0 { throw ValidationError("--save-masks-count must be >= 0") }
    }

    /// The model and tokenizer: a training checkpoint / run directory, else what ModelOptions loads.
    func loadModel() throws -> (Tokenizer, PixelLMForCausalLM, String, String) {
        let (tok, model, what, name) = try modelOptions.loadModelOrCheckpoint()
        return (tok, model, what.joined(separator: "; "), name)
    }

    func run() throws {
        runOnRanks("eval") { comm in
            let datasets = try EvalDataset.parse(valDataset)
            // outputs are checked before the model loads and the evaluation runs, not after
            if let out { try OutputDirectory.prepareFile(out, option: "--out") }
            if let saveMasks { try OutputDirectory.prepare(saveMasks, option: "--save-masks") }
            let (tok, model, what, tokName) = try loadModel()
            var o = EvalOptions()
            o.maxNewTokens = maxNewTokens
            o.points = points
            o.seed = seed
            o.saveMasks = saveMasks
            o.saveMasksCount = saveMasksCount
            o.limit = limit
            let evaluator = try Evaluator(model: model, tokenizer: tok, tokenizerName: tokName, comm: comm, options: o)
            if comm.rank == 0 && !quiet { print("eval: \(what); \(comm.size) rank(s)") }
            var reports: [EvalReport] = []
            for d in datasets {
                let source = try EvalSource(d, datasetDir: datasetDir, segTokenNum: model.config.segTokenNum,
                                            scales: model.config.imageFeatureScaleNum, seed: seed)
                let bar = comm.rank == 0 && !quiet
                let r = try evaluator.run(source) { done, total in
                    guard bar else { return }
                    let n = min(done, total), w = 20, filled = total == 0 ? w : n * w / total
                    FileHandle.standardError.write(Data("\r\(d.name) [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: w - filled))] \(n)/\(total) images".utf8))
                }
                if bar { FileHandle.standardError.write(Data("\n".utf8)) }
                reports.append(r)
                if comm.rank == 0 { print(Self.summary(r)) }
            }
            if comm.rank == 0, let out {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                let data = try enc.encode(EvalReportFile(model: what, datasets: reports))
                try AtomicFile.write([UInt8](data), to: out)
                print("eval: report \(out)")
            }
        }
    }

    static func f(_ x: Double?) -> String { x.map { String(format: "%.4f", $0) } ?? "-" }

    /// The figures as a few lines: overall, then per kind.
    static func summary(_ r: EvalReport) -> String {
        var lines: [String] = []
        let gen = r.mode == "generate"
        func line(_ name: String, _ x: EvalFigures) -> String {
            var s = "  \(name.padding(toLength: 14, withPad: " ", startingAt: 0)) questions \(String(format: "%4d", x.questions))  targets \(String(format: "%4d", x.targets))"
            if x.targets == 0 {
                s += "  no masks to score (text-only answers)"
                if gen { s += "  exact \(f(x.exactMatch))" }
            } else if gen {
                s += "  gIoU \(f(x.gIoU)) cIoU \(f(x.cIoU)) (faithful) | gIoU \(f(x.gIoUClean)) cIoU \(f(x.cIoUClean)) (clean)"
                s += "  exact \(f(x.exactMatch))  named \(f(x.targetsNamed))"
                if x.tokenLimit > 0 { s += "  token-limit \(x.tokenLimit)" }
                if x.badSegCount > 0 { s += "  bad-SEG-count \(x.badSegCount)" }
            } else {
                s += "  gIoU \(f(x.gIoU)) cIoU \(f(x.cIoU))"
            }
            return s
        }
        lines.append("\(r.dataset) (\(r.mode), \(r.overall.images) images, \(String(format: "%.1f", r.seconds)) s):")
        lines.append(line("all", r.overall))
        for (k, x) in r.byKind.sorted(by: { $0.key < $1.key }) { lines.append(line(k, x)) }
        return lines.joined(separator: "\n")
    }
}

/// The report file: the model and one report per split.
struct EvalReportFile: Codable {
    var model: String
    var datasets: [EvalReport]
}

extension ModelOptions {
    /// `--model` as a training checkpoint or run directory (its latest; `RUN/best` too), loaded without consolidating,
    /// else what `load()` loads. Also the tokenizer directory's name.
    func loadModelOrCheckpoint() throws -> (Tokenizer, PixelLMForCausalLM, [String], String) {
        if let path = model, (try? TrainCheckpoint.resolve(path)) != nil {
            let (m, tokDir, step, dir) = try Consolidate.loadModel(checkpoint: path)
            let name = tokenizer ?? tokDir
            return (try Tokenizer(directory: name), m, ["training checkpoint \(dir) (step \(step))"], name)
        }
        let (tok, m, what) = try load()
        return (tok, m, what, tokenizer ?? model ?? "tokenizer")
    }
}

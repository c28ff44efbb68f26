import ArgumentParser
import Foundation
import PixelData
import PixelModel
import PixelTensor
import PixelText
import PixelTrain

/// `pixellm pretrain-vision`: the vision tower alone, trained to name the objects of a MUSE-layout split at their cells;
/// writes a PixelLM directory that `train --version` starts from. docs/evaluation.md.
struct PretrainVision: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrain-vision",
        abstract: "Pretrain the vision tower (CLIP) alone on a MUSE-layout split: at each object's centroid cell, a linear head per word of its name (size, colour, shape in the synthetic set) on the deep features. Writes a PixelLM directory for train --version.",
        discussion: """
        Not in the reference, whose CLIP comes pretrained: a CLIP trained from scratch inside the PixelLM mixture does \
        not learn shape within the smoke budget (pixellm probe). Images with index % 5 == 4 are held out and scored \
        every --eval-every steps. The output holds the trained tower inside (model.vision_tower.vision_tower.*), the \
        rest of the model as a fresh --config model from --seed (or as --version had it), the tokenizer, and \
        pretrain_vision.json (the curve). Single process; give it OPENBLAS_NUM_THREADS = the cores.
        """)

    @Option(help: "Model config for a fresh model from --seed (a directory with config.json, the file, or a name under configs/).") var config: String?
    @Option(help: "Or a PixelLM directory (CLIP inside) whose tower continues training.") var version: String?
    @Option(name: both("dataset-dir"), help: "The dataset tree (muse_<split>.json at its top).") var datasetDir: String
    @Option(help: "MUSE split to train on: train, val, test_less or test_many.") var split = "train"
    @Option(help: "Images to use (the first N of the split; every fifth held out). Read from disk for each batch: any number fits in memory.") var images = 2000
    @Option(help: "Optimizer steps.") var steps = 1000
    @Option(name: both("batch-size"), help: "Images per step.") var batchSize = 16
    @Option(help: "Peak learning rate (linear warmup, then linear decay to 0 at --steps).") var lr: Float = 1e-3
    @Option(name: both("warmup-steps"), help: "Warmup steps.") var warmupSteps = 50
    @Option(name: both("eval-every"), help: "Score the held-out images every K steps (and at the end).") var evalEvery = 100
    @Option(name: both("eval-images"), help: "Score the first N held-out images (each a forward).") var evalImages = 1000
    @Option(name: both("time-budget"), help: "Stop after this wall time (90s, 10m, 2h) and write the output as it is.") var timeBudget: String?
    @Option(help: "Seed of the fresh model (as train's --seed: the same value gives train's initial LLM and decoder), the heads and the batch order.") var seed: UInt64 = 42
    @Option(help: "Tokenizer directory copied into the output (default: DATASET_DIR/tokenizer, or --version's).") var tokenizer: String?
    @Option(help: "Output directory (created).") var out: String

    func validate() throws {
        guard (config == nil) != (version == nil) else { throw ValidationError("give exactly one of --config and --version") }
        guard MUSEReader.splits.contains(split) else {
            throw ValidationError("--split \(split): not a MUSE split (\(MUSEReader.splits.joined(separator: ", ")))")
        }
        guard images >= 5 else { throw ValidationError("--images \(images): at least 5 (one held-out image in five)") }
        guard steps >= 1 else { throw ValidationError("--steps must be >= 1") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be >= 1") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a finite number > 0") }
        guard warmupSteps >= 0 else { throw ValidationError("--warmup-steps must be >= 0") }
        guard evalEvery >= 1 else { throw ValidationError("--eval-every must be >= 1") }
        guard evalImages >= 1 else { throw ValidationError("--eval-images must be >= 1") }
        if let t = timeBudget { _ = try Train.parseDuration(t) }
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    struct Curve: Encodable {
        struct Point: Encodable { var step: Int; var images: Int; var seconds: Double; var loss: Double?; var heldOut: [String: Double] }
        var dataset: String
        var split: String
        var trainImages: Int
        var heldOutImages: Int
        var trainObjects: Int
        var heldOutObjects: Int
        var classes: [[String]]
        var chance: [Double]
        var points: [Point]
    }

    func run() throws {
        let t0 = Date()
        let budget = try timeBudget.map(Train.parseDuration)
        let tokDir = tokenizer ?? version ?? (datasetDir as NSString).appendingPathComponent("tokenizer")
        let tok: Tokenizer
        do { tok = try Tokenizer(directory: tokDir) } catch { throw Failure(description: "\(tokDir): tokenizer: \(error)") }
        let model: PixelLMForCausalLM
        if let c = config {
            let path = try BenchModel.configPath(c)
            let cfg = try PixelLMConfig.load(path)
            guard tok.vocabSize <= cfg.vocabSize else {
                throw Failure(description: "\(path): vocab_size \(cfg.vocabSize) has no row for every token of the tokenizer \(tokDir) (\(tok.vocabSize))")
            }
            var rng = RNG(seed: seed)
            model = PixelLMForCausalLM(config: cfg, segTokenIds: tok.segIds, rng: &rng)
        } else {
            let (m, report) = try PixelLMModelDirectory.open(version!, segTokenIds: tok.segIds)
            guard report.visionLoaded else { throw Failure(description: "\(version!): no vision tower inside (model.vision_tower.vision_tower.*)") }
            model = m
        }
        try OutputDirectory.prepare(out, option: "--out")
        let reader = try MUSEReader(datasetDir: datasetDir, split: split)
        let tower = model.visionTower
        let data = try VisionPretrain.load(reader: reader, images: images, size: model.config.resizeVisionTowerSize, grid: tower.grid) { done, total in
            if done % 100 == 0 { FileHandle.standardError.write(Data("\rpretrain-vision: reading image \(done + 1)/\(total)".utf8)) }
        }
        FileHandle.standardError.write(Data("\n".utf8))
        let byImage = data.objectsByImage
        let scored = Array(data.heldOutImages.prefix(evalImages))
        let trainObjects = data.trainImages.reduce(0) { $0 + (byImage[$1]?.count ?? 0) }
        let heldObjects = scored.reduce(0) { $0 + (byImage[$1]?.count ?? 0) }
        guard !data.classes.isEmpty, trainObjects > 0, heldObjects > 0 else {
            throw Failure(description: "\(reader.indexFile): too few objects (\(data.objects.count) objects with names in \(data.imageCount) images; every fifth image is held out)")
        }
        // chance: the most frequent training class of each word position, on the held-out objects
        let chance: [Double] = data.classes.indices.map { p in
            var counts = [Int](repeating: 0, count: data.classes[p].count)
            for i in data.trainImages { for o in byImage[i] ?? [] { counts[data.objects[o].labels[p]] += 1 } }
            let top = counts.indices.max { counts[$0] < counts[$1] } ?? 0
            let right = scored.reduce(0) { s, i in s + (byImage[i] ?? []).filter { data.objects[$0].labels[p] == top }.count }
            return Double(right) / Double(heldObjects)
        }
        print("pretrain-vision: \(reader.indexFile): \(data.trainImages.count) images (\(trainObjects) objects) to train, \(data.heldOutImages.count) held out (\(scored.count) scored: \(heldObjects) objects), \(data.skipped.count) skipped, \(data.otherWordCount) objects whose names have another word count left out; "
              + String(format: "read in %.1f s", Date().timeIntervalSince(t0)))
        let names = data.classes.indices.map { p in "word \(p + 1) (\(data.classes[p].prefix(3).joined(separator: "/"))\(data.classes[p].count > 3 ? "/..." : ""))" }
        print("pretrain-vision: chance " + zip(names, chance).map { "\($0) \(String(format: "%.2f", $1))" }.joined(separator: ", "))

        let trainer = VisionPretrain.Trainer(tower: tower, classes: data.classes, lr: lr, seed: seed ^ 0x5649_5349_4F4E)
        var rng = RNG(seed: seed)
        var order: [Int] = [], cursor = 0, points: [Curve.Point] = [], seen = 0, lastLoss: Double? = nil
        let tTrain = Date()
        func evaluate(_ step: Int) throws {
            let (acc, _) = try trainer.accuracy(data, images: scored, byImage: byImage)
            var held: [String: Double] = [:]
            for (p, a) in acc.enumerated() { held["word \(p + 1)"] = a }
            let secs = Date().timeIntervalSince(tTrain)
            points.append(Curve.Point(step: step, images: seen, seconds: secs, loss: lastLoss, heldOut: held))
            print(String(format: "step %5d  images %7d  %6.0f s  %5.1f img/s  loss %@  held-out ", step, seen, secs,
                         Double(seen) / max(secs, 1e-9), lastLoss.map { String(format: "%.3f", $0) } ?? "-")
                  + acc.enumerated().map { String(format: "word %d %.2f", $0.offset + 1, $0.element) }.joined(separator: "  "))
            fflush(stdout)  // the curve as it comes, also into a file
        }
        try evaluate(0)
        var step = 0
        while step < steps {
            if let budget, Date().timeIntervalSince(t0) > budget {
                print("pretrain-vision: time budget reached at step \(step)")
                break
            }
            var batch: [Int] = []
            while batch.count < min(batchSize, data.trainImages.count) {
                if cursor == order.count {
                    order = data.trainImages
                    for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.int(i + 1)) }
                    cursor = 0
                }
                batch.append(order[cursor]); cursor += 1
            }
            let s = step + 1
            trainer.optimizer.lr = lr * (s <= warmupSteps ? Float(s) / Float(max(warmupSteps, 1))
                                                          : max(0, Float(steps - step) / Float(max(steps - warmupSteps, 1))))
            if let l = try trainer.train(data, images: batch, byImage: byImage) {
                guard l.isFinite else { throw Failure(description: "pretrain-vision: the loss is \(l) at step \(s); lower --lr") }
                lastLoss = Double(l)
            }
            seen += batch.count
            step = s
            if step % evalEvery == 0 || step == steps { try evaluate(step) }
        }
        if points.last?.step != step { try evaluate(step) }

        var files = try PixelLMCheckpoint.save(model, to: out, includeVision: true)
        files += try copyTokenizerFiles(from: tokDir, to: out)
        let curve = Curve(dataset: reader.indexFile, split: split, trainImages: data.trainImages.count, heldOutImages: scored.count,
                          trainObjects: trainObjects, heldOutObjects: heldObjects, classes: data.classes, chance: chance, points: points)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write([UInt8](try enc.encode(curve)), to: (out as NSString).appendingPathComponent("pretrain_vision.json"))
        print(String(format: "pretrain-vision: %@ (%d files and pretrain_vision.json) after %d steps, %.0f s in all", out, files.count, step,
                     Date().timeIntervalSince(t0)))
    }
}

//! `cnn degradation`: the lecture's second experiment (why deep plain
//! networks need skip connections), ResNets and their plain twins at two
//! depths, training error plotted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use cnn_data::{stratified_split, Dataset};
use cnn_models::{cifar_resnet, CifarResNetConfig, Shortcuts};
use cnn_tensor::{random::seeded_rng, Error, Result};
use cnn_train::{evaluate, LineChart, ProgressMode, ScheduleKind, TrainConfig, Trainer};

use crate::data::{self, DataSpec};
use crate::training_run::{RunInfo, RunRequest};

/// Arguments of `cnn degradation`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn degradation                                  # digits at 16×16: ResNet and plain at depths 8 and 32
  cnn degradation --depths 20,56 --epochs 30
  cnn degradation --data cifar10:~/data/cifar-10-batches-bin --samples 5000 --image-size 32

Trains a CIFAR ResNet and its plain twin (the same layers without shortcuts)
at a shallow and a deep depth, each for the same number of iterations, and
draws the training error against iterations of the four in one PNG: He et
al.'s degradation experiment. Prints each net's final training error and
test accuracy.")]
pub struct DegradationArgs {
    #[command(flatten)]
    board: crate::BoardArgs,
    /// digits (resized) | mnist:DIR | cifar10:DIR | cifar100:DIR | folder:DIR
    #[arg(long, default_value = "digits", value_parser = crate::parse_data)]
    data: DataSpec,
    /// The shallow and the deep depth (6n + 2: 8, 14, 20, 32, 44, 56, 110).
    #[arg(long, value_delimiter = ',', default_value = "20,56")]
    depths: Vec<usize>,
    /// Epochs for every net.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Training images used (a stratified sample; 0: all) [default: all for digits, 5000 otherwise].
    #[arg(long)]
    samples: Option<usize>,
    /// Images are resized to SIZE×SIZE [default: 16 for digits, the data's own size otherwise].
    #[arg(long)]
    image_size: Option<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (one-cycle, SGD with Nesterov momentum).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Seed of the inits, the sample and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The output directory (degradation.png, degradation.csv).
    #[arg(long, default_value = "degradation")]
    out: PathBuf,
    /// Print only the final lines.
    #[arg(long, short)]
    quiet: bool,
}

/// Smoothed training error per iteration (EMA over about 20 steps, bias-corrected).
fn smoothed_error(correct: &[(usize, usize)]) -> Vec<f64> {
    let beta: f64 = 0.95;
    let mut avg = 0.0;
    correct
        .iter()
        .enumerate()
        .map(|(i, &(c, n))| {
            avg = beta * avg + (1.0 - beta) * (1.0 - c as f64 / n.max(1) as f64);
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// Runs `cnn degradation`.
///
/// # Errors
/// Bad depths, unreadable data, failed writes.
pub fn degradation(args: DegradationArgs, started: Instant) -> Result<ExitCode> {
    if args.depths.len() != 2 || args.depths.iter().any(|d| d < &8 || (d - 2) % 6 != 0) {
        return Err(Error::config("degradation", format!("--depths must be two depths of the form 6n + 2 (8, 14, 20, 32, 44, 56, 110), got {:?}", args.depths)));
    }
    let digits = matches!(args.data, DataSpec::Digits);
    let size = args.image_size.or(digits.then_some(16));
    let split = data::SplitOptions {
        val_fraction: 0.0,
        val_dir: None,
        image_size: size.unwrap_or(64),
        resize: size,
        split_seed: 0,
    };
    let (info, splits) = RunInfo::prepare(RunRequest {
        spec: &args.data,
        split,
        arch: "resnet",
        batch_size: args.batch_size,
        augment: "none",
        seed: args.seed,
        normalization: None,
        bad_images: crate::training_run::BadImages::Fail,
    })?;
    let samples = args.samples.unwrap_or(if digits { 0 } else { 5000 });
    let train: Arc<dyn Dataset> = if samples > 0 && samples < splits.train.len() {
        let fraction = samples as f64 / splits.train.len() as f64;
        Arc::new(stratified_split(splits.train.clone(), fraction, args.seed)?.1)
    } else {
        splits.train.clone()
    };
    let loader = info.train_loader(train.clone(), true)?;
    let test = info.eval_loader(splits.test.clone(), 256, true)?;
    let classes = info.classes.len();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io("create", &args.out, e))?;
    if !args.quiet {
        println!(
            "degradation on {}: {} training images of {}, {} epochs of {} steps per net",
            info.data,
            train.len(),
            info.image.map(|v| v.to_string()).join("×"),
            args.epochs,
            loader.batches_per_epoch()
        );
    }
    let mut series = Vec::new();
    let mut rows = Vec::new();
    let mut csv = String::from("net,depth,iteration,train_error_smoothed\n");
    for &depth in &args.depths {
        for shortcuts in [Shortcuts::Plain, Shortcuts::Residual] {
            let kind = if shortcuts == Shortcuts::Residual { "resnet" } else { "plain" };
            let name = format!("{kind}-{depth}");
            let mut model = cifar_resnet::<f32, _>(
                &CifarResNetConfig::new(depth).with_num_classes(classes).with_shortcuts(shortcuts),
                &mut seeded_rng(args.seed),
            )?;
            let (params, _) = cnn_nn::count_params(&model);
            let steps = Arc::new(Mutex::new(Vec::new()));
            let record = steps.clone();
            let config = TrainConfig::default()
                .with_epochs(args.epochs)
                .with_lr(args.lr)
                .with_schedule(ScheduleKind::OneCycle)
                .with_seed(args.seed);
            let clock = Instant::now();
            let mut trainer = Trainer::new(config).with_progress(if args.quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::Auto
            });
            if args.board.on() {
                // One log per network: `tensorboard --logdir OUT/tensorboard` overlays them.
                trainer = trainer.with_tensorboard_dir(args.out.join("tensorboard").join(&name));
            }
            let fit = trainer
                .with_on_step(move |_, s| {
                    if let Ok(mut v) = record.lock() {
                        v.push((s.correct, s.count));
                    }
                })
                .fit(&mut model, &loader, None)?;
            let steps = steps.lock().map(|v| v.clone()).unwrap_or_default();
            let errors = smoothed_error(&steps);
            for (i, e) in errors.iter().enumerate() {
                csv.push_str(&format!("{name},{depth},{},{e:.6}\n", i + 1));
            }
            let final_train_error =
                fit.history.epochs.last().map_or(f64::NAN, |r| 1.0 - r.train_accuracy);
            let test_acc = evaluate(&mut model, &test)?.accuracy;
            let line = format!("{name:<11} {params:>9} params  final train error {:>6.2}%  test accuracy {:>6.2}%  ({:.0} s)", 100.0 * final_train_error, 100.0 * test_acc, clock.elapsed().as_secs_f64());
            println!("{line}");
            rows.push(line);
            series.push((
                format!("{name} (final train error {:.1}%)", 100.0 * final_train_error),
                errors.iter().enumerate().map(|(i, &e)| ((i + 1) as f64, 100.0 * e)).collect(),
            ));
        }
    }
    let png = args.out.join("degradation.png");
    LineChart {
        title: format!(
            "Training error, plain vs residual, depths {} and {}",
            args.depths[0], args.depths[1]
        ),
        x_desc: "iteration".into(),
        y_desc: "training error (%, smoothed)".into(),
        series,
        log_x: false,
        log_y: false,
        reference: None,
    }
    .write_png(&png, (1000, 600))?;
    cnn_tensor::write_atomic(&args.out.join("degradation.csv"), csv.as_bytes())?;
    println!(
        "drew {} and wrote degradation.csv in {:.0} s",
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

//! Prints the summary of a CIFAR ResNet-20: each layer's key, type, output
//! shape and parameter count, as torchinfo does.
//!
//! `cargo run --release --example model_summary`

fn main() -> Result<(), cnn::tensor::Error> {
    let mut net = cnn::models::cifar_resnet::<f32, _>(
        &cnn::models::CifarResNetConfig::new(20),
        &mut cnn::tensor::random::seeded_rng(0),
    )?;
    let (_, text) = cnn::nn::summary(&mut net, &[1, 3, 32, 32])?;
    print!("{text}");
    Ok(())
}

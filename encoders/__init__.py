"""Media decoding and OpenCLIP embedding. Knows images, video and OpenCLIP; never Ray or LanceDB."""

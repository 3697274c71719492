"""Where tinyvit meets the outside: the command line, the HTTP server, Ray Data, ONNX export."""

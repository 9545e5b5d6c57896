mod uhid;
fn main() {}

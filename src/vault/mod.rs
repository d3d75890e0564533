pub fn stub() {}
